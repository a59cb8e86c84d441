// Command pause is the pod sandbox's process for the e2e node: it holds the pod's
// namespaces open, sleeps until SIGTERM/SIGINT, and reaps orphaned children (it is PID 1
// when the pod shares its process namespace). The real registry.k8s.io/pause cannot be
// pulled here, so the fixture builds this into a FROM-scratch image under that name.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 4)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Reap every exited child without blocking; more may have exited per signal.
		for {
			pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
