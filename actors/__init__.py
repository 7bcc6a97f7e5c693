"""Cogment actor implementations (classes ``player`` and ``teacher``, see ``apprentice.cog_settings``)."""
