"""The WSGI application for gunicorn: ``gunicorn -c deploy/gunicorn.conf.py registry.wsgi:app``.

The one module that builds the app at import, because that is how WSGI servers load it;
settings come from ``MODELDROP_*`` environment variables. Conversion workers are not
started here: run ``modeldrop worker`` or Celery next to the web processes.
"""

from registry.app import create_app

app = create_app()
