"""The recording-consent announcement (setting ``consent_announcement``): said to a phone call before its flow or
agent starts, and heard whole.

It is an ordinary answer with fixed text (``Session.speak``): streamed through TTS, paced and marked like any
other, so the caller hears it exactly as they hear the agent. It must not be cut short, so while it plays the
session hears silence in place of the caller's audio: no barge-in, and no turn, can start over it (the call's
recording keeps its length). The flow's agent is held back until the caller has heard the last of it.
"""

from __future__ import annotations

import logging

from pipeline.conversation import TurnRecord
from pipeline.response import new_id
from pipeline.session import Session

log = logging.getLogger("voxgate.telephony")

MULAW_SILENCE = 0xFF
SOURCE = "consent"  # the turn's source, as stored with the call's turns


class ConsentAnnouncement:
    """Says ``text`` to the caller first; create it before ``session.start()``, then :meth:`start` it."""

    def __init__(self, session: Session, text: str) -> None:
        self.session = session
        self.text = text
        self.playing = True
        # Held back: Session.start() would start the flow's agent, which would speak over the announcement.
        self.agent, session.agent = session.agent, None

    def start(self) -> None:
        self.session.spawn(self._run())  # a session task: a hang-up cancels it

    def caller_audio(self, mulaw: bytes) -> bytes:
        """What the session hears of the caller: silence of the same length while the announcement plays."""
        return bytes([MULAW_SILENCE]) * len(mulaw) if self.playing else mulaw

    async def _run(self) -> None:
        session = self.session
        try:
            response = await session.speak(TurnRecord(new_id("turn"), SOURCE, ""), self.text)
            await response.finished.wait()  # heard to the end (the provider echoed the last mark)
        except Exception:  # TTS failed: logged; the call goes on rather than stay silent
            log.exception("call session %s: the consent announcement failed", session.id)
        finally:
            self.playing = False
        if self.agent is not None and not session.closed.is_set():
            session.agent = self.agent
            session.agent_step(self.agent.start())
