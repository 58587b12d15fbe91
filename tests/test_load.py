"""The server under load, through gradio_client against `python app.py` on the embedded model: several clients
at once, fifty comparisons in a row, and a hard crash in the middle. Figures are printed (pytest -s shows them)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
from conftest import app_server

FAST = {"steps": 2, "width": 64, "height": 64, "timed_runs": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # Fault injection on: a prompt with [fault:crash@optimized] crashes that side's process, hard.
    with app_server(tmp_path_factory.mktemp("load"), OPTIM_FAULT_INJECTION="1") as (url, process):
        yield url, psutil.Process(process.pid)


def _predict(client, *, seed: int, preset: str = "first-block-cache", prompt: str = "a red circle on a blue background"):
    return client.predict(
        preset, "embedded", prompt, seed, FAST["steps"], FAST["width"], FAST["height"], None, FAST["timed_runs"],
        api_name="/compare",
    )


def test_clients_at_once_all_finish_with_their_own_results_in_queue_order(server):
    from gradio_client import Client

    url, _ = server
    clients = 4
    finished: list[tuple[int, float, dict]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        client = Client(url, verbose=False)
        time.sleep(0.4 * index)  # a definite queue order: client 0 first
        report = _predict(client, seed=100 + index)[0]
        with lock:
            finished.append((index, time.perf_counter(), report))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert len(finished) == clients, "every client must get an answer"
    for index, _, report in finished:
        assert report["run"]["seed"] == 100 + index, "each client gets the result for its own settings"
    order = [index for index, _, _ in sorted(finished, key=lambda item: item[1])]
    assert order == list(range(clients)), f"served out of queue order: {order}"
    print(f"\n{clients} clients at once, all served in queue order in {time.perf_counter() - started:.1f} s")


def test_a_hard_crash_does_not_take_the_server_down(server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    url, process = server
    client = Client(url, verbose=False)
    with pytest.raises(AppError, match=r"crashed \(SIGSEGV\)"):
        _predict(client, seed=1, prompt="a red circle on a blue background [fault:crash@optimized]")
    assert process.is_running()
    report = _predict(client, seed=2)[0]
    assert report["run"]["seed"] == 2


def test_memory_stays_flat_over_fifty_comparisons(server):
    from gradio_client import Client

    url, process = server
    client = Client(url, verbose=False)
    for seed in range(5):  # warm up: first imports, caches, the first charts
        _predict(client, seed=1000 + seed)
    before = process.memory_info().rss / 2**20
    started = time.perf_counter()
    for seed in range(50):
        _predict(client, seed=2000 + seed)  # a new seed each time: both sides really run
    after = process.memory_info().rss / 2**20
    growth = after - before
    print(f"\nserver RSS over 50 comparisons: {before:.0f} MB -> {after:.0f} MB ({growth:+.1f} MB) "
          f"in {time.perf_counter() - started:.0f} s")
    assert growth < 60, f"the server grew by {growth:.1f} MB over 50 comparisons"
