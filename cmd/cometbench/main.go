// Command cometbench is cometgate's load generator. It opens many sessions
// on one or more gateway nodes over a browser transport, subscribes them,
// publishes at a fixed rate through the gateway's publish API or straight
// into the broker, and measures what the subscribers see (publish-to-receive
// latency, deliveries per second, lost, duplicated and reordered messages)
// and what the gateway spends (CPU per delivery and memory per session,
// from /proc, when given its process id).
//
//	cometbench run [flags]     one benchmark run (see "cometbench run -h")
//	cometbench tcp [flags]     the TCP bridge against direct TCP (see "cometbench tcp -h")
//	cometbench echo [flags]    a TCP echo server alone, for "tcp --target-addr"
//	cometbench scenarios       the documented scenarios and their commands
//
// Every run is bounded: a fixed number of sessions opened at a bounded
// rate, a fixed publishing time per step, a bounded drain, then everything
// is closed. Targets must be loopback addresses. One process may hold a
// limited number of open files, so large runs spread their sessions over
// child processes ("cometbench worker", not for direct use) that report to
// the parent as JSON lines. Before the first step, with --pid, a child
// ("cometbench floor-writer") pinned to the gateway's CPUs measures the
// loopback write floor, what one small write(2) of a delivery's frame
// costs there, and every step prints the gateway's CPU per delivery as a
// ratio to it (floor.go explains why it is measured that way).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errUsage) {
		fmt.Fprintln(os.Stderr, "cometbench:", err)
	}
	if err != nil {
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `usage:
  cometbench run [flags]      open sessions, publish, measure (cometbench run -h)
  cometbench tcp [flags]      TCP bridge throughput and round trips against direct TCP (cometbench tcp -h)
  cometbench echo [flags]     a TCP echo server alone, for cometbench tcp --target-addr (cometbench echo -h)
  cometbench scenarios        print the documented scenarios with their commands
`

// run is the whole program; main only wires signals and the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "run":
		o, err := parseRunFlags(args, stderr)
		if err != nil {
			return err
		}
		if o.CPUProfile != "" {
			f, err := os.Create(o.CPUProfile)
			if err != nil {
				return err
			}
			defer f.Close()
			if err := pprof.StartCPUProfile(f); err != nil {
				return err
			}
			defer pprof.StopCPUProfile()
		}
		return runBench(ctx, o, stdout, stderr)
	case "tcp":
		o, err := parseTCPFlags(args, stderr)
		if err != nil {
			return err
		}
		return runTCP(ctx, o, stdout, stderr)
	case "echo":
		return runEcho(ctx, args, stderr)
	case "worker":
		// A child started by "run"; it talks JSON lines on stdin/stdout.
		return runWorker(ctx, stdin, stdout)
	case "floor-writer":
		// A child started by "run" to measure the write floor (floor.go).
		return runFloorWriter(ctx, args, stdin, stdout, stderr)
	case "scenarios":
		printScenarios(stdout)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "cometbench: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}
