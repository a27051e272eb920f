"""Frames, processors, sessions and audio utilities of the realtime pipeline."""
