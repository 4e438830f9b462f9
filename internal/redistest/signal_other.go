//go:build !unix

package redistest

import (
	"errors"
	"os"
)

var errNoStopSignal = errors.New("redistest: no SIGSTOP on this system")

func stopProcess(*os.Process) error     { return errNoStopSignal }
func continueProcess(*os.Process) error { return errNoStopSignal }
