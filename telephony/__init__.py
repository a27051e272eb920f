"""Telephony providers (Twilio media streams first)."""
