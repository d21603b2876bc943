package bench

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// MachineCPU returns the CPU time this machine has spent busy (user, system and interrupts on
// every core, from /proc/stat): every process on it, PostgreSQL included. On a machine that a
// benchmark keeps busy, CPU per operation predicts operations per second, and varies less from
// run to run than elapsed time does on a shared VM.
func MachineCPU() (time.Duration, error) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	fields := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(fields) < 8 || fields[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat line %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	const userHZ = 100 // USER_HZ: the unit of /proc/stat on every Linux architecture Go runs on
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// ProcessCPU returns the CPU time this process has used.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
