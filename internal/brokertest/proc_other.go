//go:build !linux

package brokertest

import "syscall"

func dieWithParent() *syscall.SysProcAttr { return nil }
