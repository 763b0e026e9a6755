from project.settings.base import *  # noqa: F403
from project import env

DEBUG = env.get_bool("DEBUG", True)
