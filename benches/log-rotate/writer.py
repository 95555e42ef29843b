# Appends TOTAL numbered 90-byte lines to PATH at RATE lines/s, each line
# in one O_APPEND write; on SIGHUP reopens PATH (a writer that can reopen).
# Prints the rate reached.
import os, signal, sys, time

path, total, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
fd = os.open(path, flags, 0o644)
reopen = False


def hup(signum, frame):
    global reopen
    reopen = True


signal.signal(signal.SIGHUP, hup)
if len(sys.argv) > 4:
    with open(sys.argv[4], "w") as f:
        f.write(str(os.getpid()))
pad = b"x" * 79
start = time.monotonic()
i = 0
while i < total:
    due = min(total, int((time.monotonic() - start) * rate) + 1)
    while i < due:
        if reopen:
            reopen = False
            os.close(fd)
            fd = os.open(path, flags, 0o644)
        os.write(fd, b"%010d" % i + pad + b"\n")
        i += 1
    time.sleep(0.0005)
os.close(fd)
print("%.0f" % (total / (time.monotonic() - start)))
