package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// printVersion prints the module version the binary was built from and
// the Go version: "cometgate v1.2.0 go1.26.0 linux/amd64". A binary built
// inside a checkout without version control information, or a test
// binary, says "(devel)".
func printVersion(w io.Writer) error {
	_, err := fmt.Fprintf(w, "cometgate %s %s %s/%s\n", moduleVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return err
}

// moduleVersion is the main module's version from the build information,
// or "(devel)".
func moduleVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}
