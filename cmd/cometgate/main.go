// Command cometgate runs a cometgate gateway node, and talks to one.
//
//	cometgate [serve] [--config FILE]     run a node (the default)
//	cometgate publish [--url URL] [--key KEY] [--text] CHANNEL DATA
//	cometgate token --sub SUBJECT [--subscribe PATTERNS] [--publish PATTERNS] [--tcp TARGETS] [--ttl 1h] [--config FILE]
//	cometgate config                      print the reference configuration
//
// With no arguments and no config file it runs on an embedded NATS server
// (no TCP port taken) and serves the demo pages at http://127.0.0.1:8080/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Environ(), os.Stdout, os.Stderr)
	stop()
	if err != nil && !errors.Is(err, errUsage) {
		fmt.Fprintln(os.Stderr, "cometgate:", err)
	}
	if err != nil {
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

const usage = `usage:
  cometgate [serve] [--config FILE]        run a gateway node
  cometgate publish [--url URL] [--key KEY] [--text] CHANNEL DATA
                                           publish through a running node's API
  cometgate token --sub SUBJECT [--subscribe PATTERNS] [--publish PATTERNS]
                  [--tcp TARGETS] [--ttl 1h] [--config FILE]
                                           print a token signed with auth.hmac_secret
  cometgate config                         print the reference configuration

Every configuration key can be set by a COMETGATE_ variable
(COMETGATE_HTTP_LISTEN=127.0.0.1:9000); see "cometgate config".
`

// run is the whole program; main only wires signals and the exit code.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, environ, stderr, nil)
	case "publish":
		return publish(ctx, args, environ, stdout, stderr)
	case "token":
		return token(args, environ, stdout, stderr)
	case "config":
		return printConfig(stdout)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "cometgate: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}
