"""Tracebacks as a user needs them: the user's frames, not Ferry's machinery around them."""

import os
import pickle
import traceback

_FERRY_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_SKIP = (_FERRY_DIR + os.sep, "<frozen ", os.sep + "concurrent" + os.sep + "futures" + os.sep,
         os.sep + "asyncio" + os.sep, os.sep + "importlib" + os.sep)


def user_traceback(e: BaseException) -> str:
    """`e`'s traceback without the frames of Ferry, asyncio, concurrent.futures and the import system (just
    the exception's line when no frame is the user's: a module that is not there, say)."""
    tb = traceback.TracebackException.from_exception(e)
    chain = []
    node = tb
    while node is not None:
        chain.append(node)
        node = node.__cause__ or (node.__context__ if not node.__suppress_context__ else None)
    for t in chain:
        kept = [f for f in t.stack if not any(s in f.filename for s in _SKIP)]
        t.stack = traceback.StackSummary.from_list(kept)
    text = "".join(tb.format())
    return text.replace("Traceback (most recent call last):\n", "", 1) if not chain[0].stack else text


def pickle_error(e: BaseException) -> bytes:
    """What a Python callee answers a handle call that raised `e`: its type, message and traceback, and the
    exception itself when it survives pickling (the caller raises it again)."""
    try:
        exc = pickle.dumps(e, protocol=5)
        pickle.loads(exc)
    except Exception:
        exc = None
    return pickle.dumps({"type": type(e).__name__, "message": str(e), "traceback": user_traceback(e),
                         "exception": exc}, protocol=5)
