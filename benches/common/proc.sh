# Shell helpers the footprint benchmarks share (sourced, not run): what a
# process costs, read from /proc.
#
#   proc_cpu_ticks PID   utime + stime + cutime + cstime, in clock ticks
#   proc_mem PID         "RSS PSS PRIVATE_DIRTY" in KiB (smaps_rollup)
#   proc_fds PID         open file descriptors
#   median               the median of numbers on stdin
#   mib KIB              KiB as MiB with two decimals

proc_cpu_ticks() {
    local stat
    stat=$(cat "/proc/$1/stat")
    # The command name (field 2) may hold spaces: count after its ")".
    # There the state is word 1, so utime..cstime (fields 14-17) are 12-15.
    stat=${stat##*) }
    awk '{ print $12 + $13 + $14 + $15 }' <<<"$stat"
}

proc_mem() {
    awk '/^Rss:/ { r = $2 } /^Pss:/ { p = $2 } /^Private_Dirty:/ { d = $2 }
        END { print r + 0, p + 0, d + 0 }' "/proc/$1/smaps_rollup"
}

proc_fds() {
    ls "/proc/$1/fd" 2>/dev/null | wc -l
}

median() {
    sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) { print "nan"; exit }
        m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; print m }'
}

mib() {
    awk -v k="$1" 'BEGIN { printf "%.2f", k / 1024 }'
}

# proc_measure PID SECONDS EVERY: samples the process's memory every EVERY
# seconds for SECONDS and its CPU time over the window; prints
# "CPU_PCT RSS_KIB PSS_KIB DIRTY_KIB" (memory as medians). Fails when the
# process is gone.
proc_measure() {
    local pid=$1 secs=$2 every=$3 hz t0 t1 c0 c1 rss=() pss=() dirty=() m
    hz=$(getconf CLK_TCK)
    t0=$(date +%s%N)
    c0=$(proc_cpu_ticks "$pid") || return 1
    local end=$((t0 + secs * 1000000000))
    while :; do
        m=$(proc_mem "$pid") || return 1
        read -r r p d <<<"$m"
        rss+=("$r") pss+=("$p") dirty+=("$d")
        [ "$(date +%s%N)" -ge "$end" ] && break
        sleep "$every"
    done
    c1=$(proc_cpu_ticks "$pid") || return 1
    t1=$(date +%s%N)
    awk -v t=$((c1 - c0)) -v hz="$hz" -v ns=$((t1 - t0)) \
        -v r="$(printf '%s\n' "${rss[@]}" | median)" \
        -v p="$(printf '%s\n' "${pss[@]}" | median)" \
        -v d="$(printf '%s\n' "${dirty[@]}" | median)" \
        'BEGIN { printf "%.3f %d %d %d\n", 100 * t / hz / (ns / 1e9), r, p, d }'
}

# proc_smaps_summary PID: where the process's memory is, from
# /proc/PID/smaps, one line per kind of mapping (the binary's code, its
# read-only data, its writable data, the heap, other anonymous memory,
# thread stacks, other files) with Rss, Private_Dirty and Anonymous in KiB,
# largest Rss first.
proc_smaps_summary() {
    local exe
    exe=$(readlink "/proc/$1/exe")
    awk -v exe="$exe" '
        /^[0-9a-f]+-[0-9a-f]+ / {
            perms = $2; path = $6
            if (path == exe) name = "binary:" perms
            else if (path == "[heap]") name = "[heap]"
            else if (path ~ /^\[stack/) name = "[stack]"
            else if (path ~ /^\[/) name = path
            else if (path == "") name = "anonymous:" perms
            else name = "file:" perms
            n[name]++
            next
        }
        /^Rss:/ { rss[name] += $2 }
        /^Private_Dirty:/ { dirty[name] += $2 }
        /^Anonymous:/ { anon[name] += $2 }
        END {
            printf "%-20s %5s %9s %9s %9s\n", "mapping", "count", "Rss KiB", "dirty KiB", "anon KiB"
            for (k in n) printf "%-20s %5d %9d %9d %9d\n", k, n[k], rss[k], dirty[k], anon[k] | "sort -k3,3 -n -r"
        }' "/proc/$1/smaps"
}
