"""CoALM-IT data: loaders, builders for the three formats, chat rendering with loss masks, packing."""
