"""The test Django project's ASGI application, its static files (the admin's) served by
Django's own handler."""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.apps.djsite.settings")
application = ASGIStaticFilesHandler(get_asgi_application())
