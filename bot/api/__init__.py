"""The REST API (``/api/v1``): a FastAPI sub-application mounted on the bot's HTTP server (see ``bot.api.app``)."""
