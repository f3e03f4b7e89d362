"""Work started now and waited for later, on a thread of its own. TVM releases Python's lock while
it compiles, so two compiles on two threads use two cores: a build compiles the simulation it is
checked against beside the artifact."""

from __future__ import annotations

import threading


class Background:
    """`fn(*args)` running on its own thread; `result()` waits for it and returns its value (passed
    through `then` on the waiting thread, if given) or raises its error. Not a daemon: a build that
    fails meanwhile exits once the thread is done, not while LLVM is still running on it (TVM's and
    LLVM's statics are torn down at exit)."""

    def __init__(self, fn, *args, then=None):
        self._value = self._error = None
        self._then = then
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=False)
        self._thread.start()

    def _run(self, fn, args):
        try:
            self._value = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to whoever waits for the result
            self._error = err

    def result(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._then is not None:
            self._value, self._then = self._then(self._value), None
        return self._value
