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
