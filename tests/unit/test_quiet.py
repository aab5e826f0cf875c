"""The stderr filter of the CLI: drops exactly Ray's known harmless line, passes every other byte in order."""

import os

from embedrank.runtime.quiet import harmless_stderr_lines_hidden

HARMLESS = (
    b"[2026-11-28 20:04:13,028 E 14571 14571] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(EmbedActor))' and ID: '9a64' has constructor arguments in the object store "
    b"and max_restarts > 0. If the arguments in the object store go out of scope or are lost, the actor "
    b"restart will fail.\n"
)


def test_the_harmless_line_is_dropped_and_the_rest_kept_in_order(capfd):
    with harmless_stderr_lines_hidden():
        os.write(2, b"first line\n")
        os.write(2, HARMLESS)
        os.write(2, b"[2026 E 1 1] core_worker.cc:99: a real error\nlast, no newline")
    err = capfd.readouterr().err
    assert err == "first line\n[2026 E 1 1] core_worker.cc:99: a real error\nlast, no newline"


def test_verbose_keeps_everything(capfd):
    with harmless_stderr_lines_hidden(enabled=False):
        os.write(2, HARMLESS)
    assert capfd.readouterr().err == HARMLESS.decode()
