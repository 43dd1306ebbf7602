package main

import (
	"bytes"
	"context"
	"errors"
	"runtime"
	"strings"
	"testing"
)

// TestVersion: "cometgate version" prints the module version ("(devel)"
// in a test binary) and the Go version.
func TestVersion(t *testing.T) {
	var out, errOut bytes.Buffer
	if err := run(context.Background(), []string{"version"}, nil, &out, &errOut); err != nil {
		t.Fatalf("version: %v\n%s", err, errOut.String())
	}
	got := out.String()
	if !strings.HasPrefix(got, "cometgate "+moduleVersion()+" ") || !strings.Contains(got, runtime.Version()) || !strings.HasSuffix(got, "\n") {
		t.Errorf("version printed %q, want cometgate, %s and %s on one line", got, moduleVersion(), runtime.Version())
	}
	if moduleVersion() == "" {
		t.Error("moduleVersion is empty")
	}
}

// TestHelp: -h and --help print usage to stdout and succeed, for the
// program and for every command, without running it.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string // in stdout
	}{
		{[]string{"--help"}, []string{"usage:", "cometgate publish", "cometgate token", "cometgate config", "cometgate version"}},
		{[]string{"-h"}, []string{"usage:", "cometgate version"}},
		{[]string{"-help"}, []string{"usage:", "cometgate version"}},
		{[]string{"help"}, []string{"usage:", "cometgate version"}},
		{[]string{"serve", "--help"}, []string{"usage: cometgate [serve]", "-config"}},
		{[]string{"serve", "--config", "x.yaml", "-h"}, []string{"usage: cometgate [serve]"}},
		{[]string{"publish", "-h"}, []string{"usage: cometgate publish", "-url", "-key", "-text"}},
		{[]string{"token", "--help"}, []string{"usage: cometgate token", "-sub", "-ttl"}},
		{[]string{"config", "--help"}, []string{"usage: cometgate config"}},
		{[]string{"version", "-h"}, []string{"usage: cometgate version"}},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, nil, &out, &errOut)
		if err != nil {
			t.Errorf("%q: %v, want success", tc.args, err)
		}
		for _, w := range tc.want {
			if !strings.Contains(out.String(), w) {
				t.Errorf("%q: stdout %q lacks %q", tc.args, out.String(), w)
			}
		}
		if errOut.Len() != 0 {
			t.Errorf("%q: stderr %q, want nothing", tc.args, errOut.String())
		}
	}
}

// TestUsageMistakes: a command line that is not understood fails with the
// usage on stderr and nothing on stdout.
func TestUsageMistakes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"bogus"}, `unknown command "bogus"`},
		{[]string{"--bogus"}, "flag provided but not defined: -bogus"},
		{[]string{"serve", "extra"}, `cometgate serve: unexpected argument "extra"`},
		{[]string{"config", "extra"}, `cometgate config: unexpected argument "extra"`},
		{[]string{"version", "--short"}, "flag provided but not defined: -short"},
		{[]string{"publish", "only-a-channel"}, "usage: cometgate publish"},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, nil, &out, &errOut)
		if !errors.Is(err, errUsage) {
			t.Errorf("%q: %v, want errUsage", tc.args, err)
		}
		if !strings.Contains(errOut.String(), tc.want) || !strings.Contains(errOut.String(), "usage:") {
			t.Errorf("%q: stderr %q, want %q and the usage", tc.args, errOut.String(), tc.want)
		}
		if out.Len() != 0 {
			t.Errorf("%q: stdout %q, want nothing", tc.args, out.String())
		}
	}
}
