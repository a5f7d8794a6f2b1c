package envelope

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PasswordValidity is how far a password token's timestamp may be from the
// broker's clock, either way.
const PasswordValidity = 5 * time.Minute

// Password errors.
var (
	ErrPasswordFormat  = errors.New("malformed password token")
	ErrPasswordExpired = errors.New("password token outside validity window")
	ErrPasswordMAC     = errors.New("wrong password token")
)

// Password computes the MQTT password a device presents when it connects:
//
//	"v1." + unix_seconds + "." + hex(HMAC-SHA256(K_password, "ecowatt-v1 mqtt\x00" + id + "\x00" + unix_seconds))
//
// It never reveals the PSK and expires PasswordValidity after ts.
func Password(k *Keys, id string, ts time.Time) string {
	sec := strconv.FormatInt(ts.Unix(), 10)
	mac := passwordMAC(k, id, sec)
	return "v1." + sec + "." + hex.EncodeToString(mac[:])
}

// VerifyPassword checks a password token for device id at time now.
func VerifyPassword(k *Keys, id, token string, now time.Time) error {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || parts[0] != "v1" {
		return ErrPasswordFormat
	}
	sec, err := strconv.ParseInt(parts[1], 10, 64)
	if err != nil || strconv.FormatInt(sec, 10) != parts[1] {
		return ErrPasswordFormat
	}
	got, err := hex.DecodeString(parts[2])
	if err != nil || len(got) != sha256.Size {
		return ErrPasswordFormat
	}
	if want := passwordMAC(k, id, parts[1]); !hmac.Equal(got, want[:]) {
		return ErrPasswordMAC
	}
	if d := now.Sub(time.Unix(sec, 0)); d > PasswordValidity || d < -PasswordValidity {
		return fmt.Errorf("%w: issued %s from now", ErrPasswordExpired, d.Round(time.Second))
	}
	return nil
}
