package envelope

import "errors"

// Reason names of a refused message: the values a receiver reports in its
// metrics and security events, and the result names of the test vectors
// (PROTOCOL.md section 6.1). One set of names everywhere, so an alert on a
// metric label means what the spec says.
const (
	ReasonMalformed = "malformed"      // not a well-formed envelope (ErrMalformed)
	ReasonOversized = "oversized"      // above MaxSize (ErrTooLarge)
	ReasonBadMAC    = "bad_mac"        // the MAC does not verify (ErrMAC)
	ReasonDecrypt   = "decrypt_failed" // authentic, but GCM refuses it (ErrDecrypt)
	ReasonReplay    = "replay"         // nonce seen before (ErrReplay)
	ReasonStale     = "stale_nonce"    // nonce 0 or below the window (ErrStale)
)

// Reasons lists every reason name, in the order of the receive checks.
var Reasons = []string{ReasonOversized, ReasonMalformed, ReasonBadMAC, ReasonDecrypt, ReasonReplay, ReasonStale}

// Reason names the error of Open, OpenBinary or Window.Accept, or returns ""
// for nil and for an error that is none of theirs.
func Reason(err error) string {
	for _, r := range []struct {
		err  error
		name string
	}{
		{ErrTooLarge, ReasonOversized}, {ErrMalformed, ReasonMalformed}, {ErrMAC, ReasonBadMAC},
		{ErrDecrypt, ReasonDecrypt}, {ErrReplay, ReasonReplay}, {ErrStale, ReasonStale},
	} {
		if errors.Is(err, r.err) {
			return r.name
		}
	}
	return ""
}
