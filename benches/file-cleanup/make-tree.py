# Makes ROOT with FILES empty files, 1000 per directory; every tenth file's
# times are set 30 days back (the old ones).
import os, sys, time

root, files = sys.argv[1], int(sys.argv[2])
old = time.time() - 30 * 86400
per = 1000
for d in range((files + per - 1) // per):
    dp = os.path.join(root, "d%05d" % d)
    os.makedirs(dp, exist_ok=True)
    for i in range(min(per, files - d * per)):
        p = os.path.join(dp, "f%04d" % i)
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644))
        if i % 10 == 0:
            os.utime(p, (old, old))
