package load

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
)

// ErrNotLoopback is wrapped by CheckLoopback for a broker off this machine.
var ErrNotLoopback = errors.New("broker is not on loopback")

// CheckLoopback accepts a tcp:// or mqtt:// URL whose host is a loopback
// address, or a name that resolves only to loopback addresses. The
// harness must never load a broker on another machine.
func CheckLoopback(ctx context.Context, raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("broker url %q: %w", raw, err)
	}
	if u.Scheme != "tcp" && u.Scheme != "mqtt" {
		return fmt.Errorf("broker url %q: scheme must be tcp or mqtt", raw)
	}
	host := u.Hostname()
	if host == "" || u.Port() == "" {
		return fmt.Errorf("broker url %q: want tcp://HOST:PORT", raw)
	}
	if ip := net.ParseIP(host); ip != nil {
		if !ip.IsLoopback() {
			return fmt.Errorf("broker url %q: %w", raw, ErrNotLoopback)
		}
		return nil
	}
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return fmt.Errorf("broker url %q: resolve: %w", raw, err)
	}
	for _, a := range addrs {
		if !a.IP.IsLoopback() {
			return fmt.Errorf("broker url %q: %s resolves to %s: %w", raw, host, a.IP, ErrNotLoopback)
		}
	}
	if len(addrs) == 0 {
		return fmt.Errorf("broker url %q: %s resolves to nothing", raw, host)
	}
	return nil
}
