"""log.py -- leveled, timestamped log lines on stderr, in the format of
common/log.c ("2024-05-01T12:00:00.123Z INFO  ddm-torch-worker: message")."""
import sys
import threading
import time

LEVELS = ("debug", "info", "warn", "error", "off")
_TAGS = ("DEBUG", "INFO ", "WARN ", "ERROR")


class _Log:
    def __init__(self):
        self.name = "ddm-torch-worker"
        self.level = 1
        self._lock = threading.Lock()

    def set_level(self, name):
        """Sets the level by name; returns False for an unknown name."""
        if name not in LEVELS:
            return False
        self.level = LEVELS.index(name)
        return True

    def _emit(self, level, msg):
        if level < self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
        line = f"{stamp}.{int(now * 1000) % 1000:03d}Z {_TAGS[level]} {self.name}: {msg}\n"
        with self._lock:
            sys.stderr.write(line)
            sys.stderr.flush()

    def debug(self, msg): self._emit(0, msg)
    def info(self, msg): self._emit(1, msg)
    def warn(self, msg): self._emit(2, msg)
    def error(self, msg): self._emit(3, msg)


log = _Log()
