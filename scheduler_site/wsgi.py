import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")
application = get_wsgi_application()

# What the web process loaded to start lives as long as it does: kept out of the
# collector's full passes, which otherwise walk all of it every few requests of a large
# page and make that request the slow one.
gc.collect()
gc.freeze()
