from project import env
from project.settings.base import *

DEBUG = env.get_bool("DEBUG", True)
