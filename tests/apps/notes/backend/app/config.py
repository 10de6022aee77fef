"""Settings from the environment only (fastpg writes them to the service's environment file)."""

import os

GREETING = os.environ["NOTES_GREETING"]
SECRET_KEY = os.environ["NOTES_SECRET_KEY"]
DATABASE_NAME = os.environ["NOTES_DB_NAME"]
