"""``HeardTranscript``: the agent's transcript lines, cut to the words the caller really heard.

Every chunk the agent queues is counted here in samples on one cumulative playback timeline, and
every sentence remembers where it lies on it and the mark that closes it. On barge-in the media
session drops what was not played (``flush()`` returns how many milliseconds) and this turns that
back into words: each sentence keeps the share of its words that was played, a cut line ends in
" ...", and a line of which nothing was heard leaves the transcript. Where the session can say how
much of a marked sentence was heard (:class:`~vr3ai.media.interface.HeardPosition`: it pads every
marked sentence to whole frames, which a sample count cannot see) that figure wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from vr3ai.agent.base import RunReport, TranscriptLine


@dataclass
class Sentence:
    text: str
    start_sample: int
    """Where it starts on the agent's cumulative playback timeline."""
    end_sample: int
    mark: str
    line: AgentLine


@dataclass
class AgentLine:
    """An agent transcript line being spoken; its text follows what was queued and heard."""

    line: TranscriptLine
    sentences: list[Sentence] = field(default_factory=list)


class HeardTranscript:
    def __init__(self, report: RunReport, sample_rate: int) -> None:
        self._report = report
        self.sample_rate = sample_rate
        self._played: list[Sentence] = []
        self._samples = 0  # agent samples queued so far, minus what flushes dropped

    def open_line(self, at_ms: int) -> AgentLine:
        """A new agent line in the report, starting at ``at_ms`` (when its audio will be heard)."""
        return AgentLine(self._report.say("agent", "", at_ms, at_ms))

    def queued(self, line: AgentLine, text: str, samples: int, mark: str | None, new_sentence: bool) -> None:
        """``samples`` of agent audio were queued: the start of sentence ``text`` when
        ``new_sentence``, else more of the line's last sentence; ``mark`` closes it."""
        start = self._samples
        self._samples += samples
        if new_sentence:
            sentence = Sentence(text, start, self._samples, mark or "", line)
            line.sentences.append(sentence)
            self._played.append(sentence)
            line.line.text = " ".join(s.text for s in line.sentences)
        else:
            line.sentences[-1].end_sample = self._samples
        if mark is not None:
            line.sentences[-1].mark = mark

    def marked(self, mark: str, at_ms: int) -> None:
        """The sentence closed by ``mark`` was heard completely at ``at_ms``."""
        for s in self._played:
            if s.mark == mark:
                s.line.line.end_ms = max(s.line.line.end_ms, at_ms)
                break

    def settled(self) -> None:
        """Everything queued was heard: no line can be cut any more."""
        self._played.clear()

    def cut(self, dropped_ms: int, now_ms: int, heard_ms_of: Callable[[str], int | None] | None) -> None:
        """The last ``dropped_ms`` of queued agent audio were dropped unheard: cut the lines."""
        rate = self.sample_rate
        heard = max(0, self._samples - dropped_ms * rate // 1000)
        touched: dict[int, AgentLine] = {}
        for p in self._played:
            if p.end_sample > heard:
                touched[id(p.line)] = p.line
        for line in touched.values():
            words: list[str] = []
            cut = False
            for s in line.sentences:
                n = s.end_sample - s.start_sample
                done = min(max(heard - s.start_sample, 0), n)
                if s.mark and heard_ms_of is not None:
                    ms = heard_ms_of(s.mark)
                    if ms is not None:
                        done = min(n, ms * rate // 1000)
                sw = s.text.split()
                if done >= n - rate // 50:  # within a frame (ms rounding, padding)
                    words.extend(sw)
                else:
                    words.extend(sw[: int(len(sw) * done / max(1, n))])
                    cut = True
            text = " ".join(words)
            if cut and text:
                text += " ..."
            line.line.text = text
            line.line.end_ms = now_ms
            if not words and line.line in self._report.transcript:
                self._report.transcript.remove(line.line)
        self._played.clear()
        self._samples = heard
