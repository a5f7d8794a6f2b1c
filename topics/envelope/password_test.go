package envelope

import (
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"
)

var tokenRE = regexp.MustCompile(`^v1\.(0|-?[1-9][0-9]*)\.[0-9a-f]{64}$`)

// passwordCase is one row of the VerifyPassword table; FuzzVerifyPassword
// is seeded from it.
type passwordCase struct {
	name  string
	psk   []byte
	id    string
	token string
	now   time.Time
	want  error
}

func passwordCases(t testing.TB) []passwordCase {
	k := keysFor(t, testPSK)
	issued := time.Unix(1767225600, 0)
	tok := Password(k, testID, issued)
	mac := tok[strings.LastIndexByte(tok, '.')+1:]
	return []passwordCase{
		{name: "valid now", token: tok, now: issued},
		{name: "valid sub-second later", token: tok, now: issued.Add(999 * time.Millisecond)},
		{name: "valid at +5 min", token: tok, now: issued.Add(PasswordValidity)},
		{name: "valid at -5 min", token: tok, now: issued.Add(-PasswordValidity)},
		{name: "uppercase version", token: "V1" + tok[2:], now: issued, want: ErrPasswordFormat},
		{name: "uppercase mac accepted", token: tok[:len(tok)-64] + strings.ToUpper(mac), now: issued},
		{name: "expired just after +5 min", token: tok, now: issued.Add(PasswordValidity + time.Nanosecond), want: ErrPasswordExpired},
		{name: "expired at +5 min 1 s", token: tok, now: issued.Add(PasswordValidity + time.Second), want: ErrPasswordExpired},
		{name: "from the future beyond -5 min", token: tok, now: issued.Add(-PasswordValidity - time.Nanosecond), want: ErrPasswordExpired},
		{name: "a day old", token: tok, now: issued.Add(24 * time.Hour), want: ErrPasswordExpired},
		{name: "wrong key", psk: otherPSK, token: tok, now: issued, want: ErrPasswordMAC},
		{name: "wrong id", id: "inv-0002", token: tok, now: issued, want: ErrPasswordMAC},
		{name: "id prefix", id: "inv-000", token: tok, now: issued, want: ErrPasswordMAC},
		{name: "timestamp changed", token: "v1.1767225601." + mac, now: issued, want: ErrPasswordMAC},
		{name: "flipped mac", token: flipHex(tok, len(tok)-1), now: issued, want: ErrPasswordMAC},
		{name: "empty", token: "", now: issued, want: ErrPasswordFormat},
		{name: "psk as password", token: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f", now: issued, want: ErrPasswordFormat},
		{name: "wrong version", token: "v2" + tok[2:], now: issued, want: ErrPasswordFormat},
		{name: "two parts", token: "v1." + mac, now: issued, want: ErrPasswordFormat},
		{name: "four parts", token: tok + ".x", now: issued, want: ErrPasswordFormat},
		{name: "empty seconds", token: "v1.." + mac, now: issued, want: ErrPasswordFormat},
		{name: "seconds with plus", token: "v1.+1767225600." + mac, now: issued, want: ErrPasswordFormat},
		{name: "seconds with leading zero", token: "v1.01767225600." + mac, now: issued, want: ErrPasswordFormat},
		{name: "seconds with space", token: "v1. 1767225600." + mac, now: issued, want: ErrPasswordFormat},
		{name: "seconds not a number", token: "v1.abc." + mac, now: issued, want: ErrPasswordFormat},
		{name: "seconds overflow", token: "v1.99999999999999999999." + mac, now: issued, want: ErrPasswordFormat},
		{name: "mac not hex", token: tok[:len(tok)-2] + "zz", now: issued, want: ErrPasswordFormat},
		{name: "mac short", token: tok[:len(tok)-2], now: issued, want: ErrPasswordFormat},
		{name: "mac long", token: tok + "00", now: issued, want: ErrPasswordFormat},
		{name: "mac odd length", token: tok + "0", now: issued, want: ErrPasswordFormat},
	}
}

func TestVerifyPassword(t *testing.T) {
	for _, tc := range passwordCases(t) {
		t.Run(tc.name, func(t *testing.T) {
			psk, id := tc.psk, tc.id
			if psk == nil {
				psk = testPSK
			}
			if id == "" {
				id = testID
			}
			err := VerifyPassword(keysFor(t, psk), id, tc.token, tc.now)
			if tc.want == nil && err != nil || tc.want != nil && !errors.Is(err, tc.want) {
				t.Fatalf("VerifyPassword = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestPasswordForm(t *testing.T) {
	k := keysFor(t, testPSK)
	for _, ts := range []time.Time{time.Unix(0, 0), time.Unix(1767225600, 999e6), time.Unix(-5, 0), time.Unix(1<<40, 0)} {
		tok := Password(k, testID, ts)
		if !tokenRE.MatchString(tok) {
			t.Errorf("Password(%v) = %q: bad form", ts, tok)
		}
		if err := VerifyPassword(k, testID, tok, ts); err != nil {
			t.Errorf("Password(%v) does not verify: %v", ts, err)
		}
	}
	if a, b := Password(k, "a", testTime), Password(keysFor(t, otherPSK), "a", testTime); a == b {
		t.Error("two keys gave the same token")
	}
}
