import time
import pytest
from tests import test_hostile_models as t

_orig_upload = t.Server.upload
_orig_texts = t.Server.client_visible_texts

def upload(self, name, zip_path, timeout=300):
    s = time.monotonic(); r = _orig_upload(self, name, zip_path, timeout)
    print(f"\nTIMING upload {name} {time.monotonic()-s:.1f}s", flush=True); return r

def texts(self):
    s = time.monotonic(); r = _orig_texts(self)
    print(f"\nTIMING texts {time.monotonic()-s:.1f}s", flush=True); return r

t.Server.upload = upload
t.Server.client_visible_texts = texts
_orig_init = t.Server.__init__
def init(self, *a, **k):
    s = time.monotonic(); _orig_init(self, *a, **k); print(f"\nTIMING init {time.monotonic()-s:.1f}s", flush=True)
t.Server.__init__ = init
_orig_markers = t._markers_on_host
def markers(p):
    s = time.monotonic(); r = _orig_markers(p); print(f"\nTIMING markers {time.monotonic()-s:.1f}s", flush=True); return r
t._markers_on_host = markers

test_first = t.test_hostile_savedmodels_are_refused_and_nothing_leaks
