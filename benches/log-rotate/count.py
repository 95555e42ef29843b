# Counts the numbered lines of BASE in DIR across the live file and every
# generation (BASE.N, BASE.N.gz, BASE.N.zst), oldest first, as one stream
# (a copy that ends mid-line continues in the next file). Prints
# "written lost duplicated malformed".
import gzip, os, re, subprocess, sys

d, base, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
gens = []
for name in os.listdir(d):
    m = re.fullmatch(re.escape(base) + r"\.(\d+)(\.gz|\.zst)?", name)
    if m:
        gens.append((int(m.group(1)), name, m.group(2)))
stream = bytearray()
for n, name, suffix in sorted(gens, reverse=True):
    p = os.path.join(d, name)
    if suffix == ".gz":
        with gzip.open(p, "rb") as f:
            stream += f.read()
    elif suffix == ".zst":
        stream += subprocess.run(["zstd", "-dc", p], check=True, capture_output=True).stdout
    else:
        with open(p, "rb") as f:
            stream += f.read()
live = os.path.join(d, base)
if os.path.exists(live):
    with open(live, "rb") as f:
        stream += f.read()
seen = [0] * total
bad = 0
for line in bytes(stream).split(b"\n"):
    if not line:
        continue
    try:
        n = int(line[:10])
    except ValueError:
        bad += 1
        continue
    if 0 <= n < total and len(line) == 89:
        seen[n] += 1
    else:
        bad += 1
lost = sum(1 for s in seen if s == 0)
dup = sum(s - 1 for s in seen if s > 1)
print(total, lost, dup, bad)
