package brokertest

import "syscall"

// dieWithParent makes a broker the tests started die with the test binary,
// even when `go test -timeout` or a watchdog kills it before its cleanup.
func dieWithParent() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
