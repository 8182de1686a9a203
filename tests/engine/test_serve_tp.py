"""engine.serve --tp 2 under torchrun (two gloo ranks on CPU): rank 0 serves and schedules, rank 1 replays its model
calls; concurrent greedy answers equal the single-process `engine.generate` on the same checkpoint."""

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import openai
import torch

import engine
from engine.config import get_config
from engine.model import build_model
from engine.serving import launch
from engine.weights import save_hf

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
            "--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"]  # the agent binds port 0: no port race


def test_tp2_server_equals_single_process(tmp_path):
    model = build_model(get_config("debug"))
    model.to_empty(device="cpu")
    model.init_weights(std=0.05, generator=torch.Generator().manual_seed(7))
    ckpt = str(save_hf(model, tmp_path / "ckpt", dtype=torch.float32))
    ours, tok = engine.load(ckpt, dtype=torch.float32, device="cpu")
    questions = ["hello there", "what is two plus two", "a b c d e f g", "tell me a story about a cat"]
    want = [engine.generate(ours, tok, [{"role": "user", "content": q}], max_new_tokens=10) for q in questions]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["--model", ckpt, "--tp", "2", "--served-model-name", "dbg", "--dtype", "fp32"]  # fp32 as `ours` above
    with launch.server(args, launcher=TORCHRUN, env=env,
                       log_dir=str(tmp_path)) as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="-", max_retries=0)

        def ask(q):
            r = client.chat.completions.create(model="dbg", messages=[{"role": "user", "content": q}], max_tokens=10,
                                               temperature=0)
            return r.choices[0].message.content

        with ThreadPoolExecutor(len(questions)) as pool:
            got = list(pool.map(ask, questions))
    assert got == want
