from project import env
from project.settings.base import *  # noqa: F403

DEBUG = env.get_bool("DEBUG", True)
