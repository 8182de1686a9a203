"""Value pools and number words for the synthetic function-calling generator (project-made, no external source).

Pools hold surface values a user might type. The synthetic rows are training data only; the benchmarks are scored
on their own test sets, and every built row is checked against their test queries (`coalm.agent`).
"""

from __future__ import annotations

POOLS = {
    "city": ["Oslo", "Lima", "Dakar", "Perth", "Quito", "Hanoi", "Porto", "Tunis", "Leeds", "Cusco", "Bergen", "Turin",
             "Malmo", "Graz", "Izmir", "Kyoto", "Cork", "Riga", "Nantes", "Denver", "Austin", "Boston", "Seattle",
             "Madrid", "Lisbon", "Vienna", "Prague", "Nairobi", "Lagos", "Mumbai", "Osaka", "Sydney", "Toronto",
             "Chicago", "Munich", "Zurich", "Dublin", "Helsinki", "Santiago", "Bogota"],
    "country": ["Norway", "Peru", "Senegal", "Japan", "Brazil", "Canada", "Kenya", "Portugal", "Vietnam", "Chile",
                "Germany", "India", "Mexico", "Egypt", "Australia", "Spain", "Italy", "Ireland", "Finland", "Ghana"],
    "person": ["Alice Moreau", "Ben Carter", "Chen Wei", "Dana Kowalski", "Elif Yilmaz", "Farid Haddad", "Grace Lee",
               "Hugo Silva", "Ines Duarte", "Jonas Berg", "Keiko Tanaka", "Liam Walsh", "Maya Patel", "Nora Jensen",
               "Omar Aziz", "Priya Nair", "Quinn Hughes", "Rosa Delgado", "Sam Okafor", "Tara Novak"],
    "first": ["Alice", "Ben", "Chen", "Dana", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas", "Keiko", "Liam",
              "Maya", "Nora", "Omar", "Priya", "Quinn", "Rosa", "Sam", "Tara"],
    "company": ["Acme Corp", "Globex", "Initech", "Umbrella Labs", "Stark Industries", "Wayne Holdings", "Hooli",
                "Vandelay Imports", "Soylent", "Cyberdyne", "Tyrell Systems", "Aperture Science"],
    "ticker": ["AAPL", "MSFT", "GOOG", "AMZN", "TSLA", "NVDA", "META", "IBM", "ORCL", "INTC", "NFLX", "AMD"],
    "currency": ["USD", "EUR", "GBP", "JPY", "CHF", "CAD", "AUD", "NOK", "SEK", "INR"],
    "cuisine": ["Thai", "Greek", "Mexican", "Korean", "Lebanese", "Ethiopian", "Peruvian", "Vietnamese", "Spanish",
                "Turkish", "Italian", "Indian"],
    "restaurant": ["Blue Lantern", "Olive Grove", "Copper Pot", "Saffron House", "Green Fig", "Little Anchor",
                   "Red Door Bistro", "Maple Table", "Silver Spoon", "Golden Wok", "Harbor Grill", "Stone Oven"],
    "hotel": ["Grand Plaza", "Seaside Inn", "Mountain Lodge", "City Suites", "Riverside Hotel", "Park View",
              "The Meridian", "Sunset Resort", "Old Mill Inn", "Harbor House"],
    "song": ["Paper Moon", "Electric Sky", "Slow River", "Neon Nights", "Golden Hour", "Lost Signal", "Quiet Storm",
             "Summer Rain", "Wild Heart", "Midnight Train", "Ocean Drive", "Falling Stars"],
    "artist": ["The Velvet Owls", "Mira Stone", "Jonah Reed", "Static Bloom", "Luna Vale", "Kite Parade", "Ada Fox",
               "The Night Ferns", "Rio Banks", "Echo Harbor"],
    "movie": ["The Silent Orbit", "Glass Harbor", "Red Meridian", "Northern Lights", "The Last Lighthouse",
              "Paper Kingdoms", "Iron Valley", "Blue Horizon", "The Quiet Forest", "Midnight Express"],
    "book": ["The Salt Road", "Winter Garden", "A Map of Clouds", "The Clockmaker", "Ashes and Ink",
             "The Long Field", "River of Glass", "Small Hours"],
    "genre": ["jazz", "rock", "pop", "classical", "hip hop", "folk", "blues", "electronic"],
    "product": ["wireless mouse", "standing desk", "coffee grinder", "yoga mat", "desk lamp", "backpack",
                "running shoes", "water bottle", "phone case", "mechanical keyboard", "air purifier", "blender"],
    "email": ["alice@example.com", "ben.carter@mail.com", "chen.wei@corp.net", "dana@studio.io", "elif@uni.edu",
              "farid.h@example.org", "grace.lee@shop.com", "hugo@team.dev"],
    "topic": ["budget review", "project kickoff", "quarterly planning", "design sync", "hiring plan",
              "product launch", "security audit", "team retrospective", "client demo", "roadmap update"],
    "task": ["call mom", "buy milk", "water the plants", "pay the rent", "book the dentist", "feed the cat",
             "send the report", "pick up the kids", "renew my passport", "take my pills", "clean the garage"],
    "place": ["the airport", "Central Station", "the museum", "Pine Street 12", "the stadium", "Harbor Park",
              "the city hall", "Oak Avenue 5", "the university", "the mall", "Lake Road 8", "the library"],
    "room": ["conference room A", "the board room", "room 204", "the lounge", "meeting room 3", "the studio"],
    "device": ["living room lamp", "kitchen light", "air conditioner", "heater", "garage door", "coffee machine",
               "bedroom fan", "porch light"],
    "language": ["English", "French", "Spanish", "German", "Japanese", "Italian", "Portuguese", "Korean"],
    "word": ["serendipity", "ephemeral", "ubiquitous", "resilience", "paradigm", "eloquent", "meticulous", "candid"],
    "symptom": ["headache", "fever", "sore throat", "back pain", "cough", "nausea", "dizziness", "rash"],
    "doctor": ["Dr. Smith", "Dr. Alvarez", "Dr. Ng", "Dr. Okoye", "Dr. Fischer", "Dr. Rossi"],
    "username": ["jdoe", "amoreau", "bcarter", "cwei", "dkowalski", "eyilmaz", "user42", "traveler9"],
    "password": ["pass123", "s3cret!", "blue#sky", "hunter2", "qwerty88", "tulip2024"],
    "species": ["gray wolf", "red fox", "bald eagle", "sea otter", "snow leopard", "koala", "bison", "puffin"],
    "chemical": ["sodium chloride", "glucose", "ethanol", "carbon dioxide", "ammonia", "sulfuric acid"],
    "planet": ["Mars", "Jupiter", "Venus", "Saturn", "Mercury", "Neptune"],
    "team": ["Lakers", "Celtics", "Arsenal", "Real Madrid", "Yankees", "Red Sox", "Bayern", "Juventus"],
    "sport": ["basketball", "football", "tennis", "baseball", "cricket", "hockey"],
    "color": ["red", "blue", "green", "black", "white", "yellow"],
    "file": ["report.pdf", "notes.txt", "budget.xlsx", "photo.png", "data.csv", "slides.pptx", "backup.zip"],
    "folder": ["/home/user/docs", "/var/log", "/tmp/output", "/data/projects", "C:/Users/me/Desktop"],
    "url": ["https://example.com", "https://news.site/today", "https://shop.io/cart", "https://blog.dev/post/7"],
    "keyword": ["solar panels", "electric cars", "remote work", "healthy recipes", "machine learning",
                "ancient Rome", "coral reefs", "quantum computing"],
    "ingredient": ["chicken", "tofu", "rice", "spinach", "mushrooms", "lentils", "salmon", "eggs", "tomatoes"],
    "airport": ["JFK", "LAX", "LHR", "CDG", "NRT", "SFO", "ORD", "DXB", "SIN", "FRA"],
}

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 1000 ("five", "forty-two", "three hundred and six")."""
    if not 0 <= n < 1000:
        raise ValueError(f"number_words covers 0..999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    rest = n % 100
    return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def ordinal(day: int) -> str:
    suffix = "th" if 10 <= day % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"
