// Command cometgate runs a cometgate gateway node, and talks to one.
//
//	cometgate [serve] [--config FILE]     run a node (the default)
//	cometgate publish [--url URL] [--key KEY] [--text] CHANNEL DATA
//	cometgate token --sub SUBJECT [--subscribe PATTERNS] [--publish PATTERNS] [--tcp TARGETS] [--ttl 1h] [--kid ID] [--config FILE]
//	cometgate revoke [--url URL] [--key KEY] [--reason TEXT] SUBJECT
//	cometgate config                      print the reference configuration
//	cometgate version                     print the version of cometgate and Go
//
// Every command takes -h or --help.
//
// With no arguments and no config file it runs on an embedded NATS server
// (no TCP port taken) and serves the demo pages at http://127.0.0.1:8080/.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
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

// errUsage reports a command line that is not understood; the usage went
// to stderr already, so main adds nothing but the exit status.
var errUsage = errors.New("usage")

// errHelp is returned by a command whose -h or --help printed its usage to
// stdout; run turns it into success.
var errHelp = errors.New("help printed")

const usage = `usage:
  cometgate [serve] [--config FILE]        run a gateway node
  cometgate publish [--url URL] [--key KEY] [--text] CHANNEL DATA
                                           publish through a running node's API
  cometgate token --sub SUBJECT [--subscribe PATTERNS] [--publish PATTERNS]
                  [--tcp TARGETS] [--ttl 1h] [--kid ID] [--config FILE]
                                           print a token signed with auth.hmac_secret
  cometgate revoke [--url URL] [--key KEY] [--reason TEXT] SUBJECT
                                           end a principal's sessions on every node
  cometgate config                         print the reference configuration
  cometgate version                        print the version of cometgate and Go
  cometgate help                           print this help

"cometgate COMMAND --help" describes a command's flags. Every configuration
key can be set by a COMETGATE_ variable (COMETGATE_HTTP_LISTEN=127.0.0.1:9000);
see "cometgate config".
`

// run is the whole program; main only wires signals and the exit code.
func run(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, environ, stdout, stderr)
	if errors.Is(err, errHelp) {
		return nil
	}
	return err
}

// dispatch runs the command args name; serve when they name none.
func dispatch(ctx context.Context, args, environ []string, stdout, stderr io.Writer) error {
	cmd := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	} else if len(args) > 0 && isHelpFlag(args[0]) {
		cmd = "help" // the program's help, not serve's
	}
	switch cmd {
	case "serve":
		return serve(ctx, args, environ, stdout, stderr, nil)
	case "publish":
		return publish(ctx, args, environ, stdout, stderr)
	case "token":
		return token(args, environ, stdout, stderr)
	case "revoke":
		return revoke(ctx, args, environ, stdout, stderr)
	case "config":
		if err := parseFlags(newFlagSet("config", "cometgate config"), args, stdout, stderr); err != nil {
			return err
		}
		return printConfig(stdout)
	case "version":
		if err := parseFlags(newFlagSet("version", "cometgate version"), args, stdout, stderr); err != nil {
			return err
		}
		return printVersion(stdout)
	case "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprintf(stderr, "cometgate: unknown command %q\n\n%s", cmd, usage)
	return errUsage
}

func isHelpFlag(arg string) bool {
	switch arg {
	case "-h", "-help", "--help":
		return true
	}
	return false
}

// newFlagSet returns the flag set of a command whose usage line is
// synopsis; its usage lists the flags, if any.
func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n", synopsis)
		hasFlags := false
		fs.VisitAll(func(*flag.Flag) { hasFlags = true })
		if hasFlags {
			fmt.Fprint(fs.Output(), "\nflags:\n")
			fs.PrintDefaults()
		}
	}
	return fs
}

// parseFlags parses a command's flags and refuses arguments after them
// when the command takes none (fs.NArg is the caller's to check
// otherwise: use parseFlagsArgs). -h and --help print the usage to
// stdout and return errHelp; a mistake prints the problem and the usage to
// stderr and returns errUsage.
func parseFlags(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	if err := parseFlagsArgs(fs, args, stdout, stderr); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "cometgate %s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		fs.SetOutput(stderr)
		fs.Usage()
		return errUsage
	}
	return nil
}

// parseFlagsArgs is parseFlags for a command that takes arguments.
func parseFlagsArgs(fs *flag.FlagSet, args []string, stdout, stderr io.Writer) error {
	// The flag package prints to one writer; help goes to stdout and
	// mistakes to stderr, so it prints to a buffer first.
	var out bytes.Buffer
	fs.SetOutput(&out)
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, flag.ErrHelp):
		_, _ = stdout.Write(out.Bytes())
		return errHelp
	}
	_, _ = stderr.Write(out.Bytes())
	return errUsage
}
