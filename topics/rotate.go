package topics

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
)

// Key rotation bodies (PROTOCOL.md section 15).

// MaxRotationIDLen bounds a rotation ID.
const MaxRotationIDLen = 64

// RotateKey is the body of down/rotate_key: {"rotate_key":{...}}.
type RotateKey struct {
	ID  string `json:"id"`  // the rotation, 1-64 printable ASCII bytes
	Key string `json:"key"` // the new PSK, 64 lowercase hex digits
}

// KeyAck is the body of up/key_ack: {"key_ack":{"id":...}}, sealed under
// the new key.
type KeyAck struct {
	ID string `json:"id"`
}

// KeyConfirm is the body of down/key_confirm: {"key_confirm":{"id":...}},
// sealed under the new key.
type KeyConfirm struct {
	ID string `json:"id"`
}

// ErrBadBody is wrapped by the rotation body parsers.
var ErrBadBody = errors.New("invalid body")

// ParseRotateKey parses a rotate_key body strictly and returns the new PSK.
func ParseRotateKey(b []byte) (RotateKey, []byte, error) {
	var w struct {
		RotateKey *RotateKey `json:"rotate_key"`
	}
	if err := strict(b, &w); err != nil || w.RotateKey == nil {
		return RotateKey{}, nil, fmt.Errorf("%w: rotate_key: %v", ErrBadBody, err)
	}
	r := *w.RotateKey
	if err := checkRotationID(r.ID); err != nil {
		return RotateKey{}, nil, err
	}
	key, err := hex.DecodeString(r.Key)
	if err != nil || len(key) != 32 || hex.EncodeToString(key) != r.Key {
		return RotateKey{}, nil, fmt.Errorf("%w: rotate_key: key must be 64 lowercase hex digits", ErrBadBody)
	}
	return r, key, nil
}

// ParseKeyAck parses a key_ack body strictly.
func ParseKeyAck(b []byte) (KeyAck, error) {
	var w struct {
		KeyAck *KeyAck `json:"key_ack"`
	}
	if err := strict(b, &w); err != nil || w.KeyAck == nil {
		return KeyAck{}, fmt.Errorf("%w: key_ack: %v", ErrBadBody, err)
	}
	return *w.KeyAck, checkRotationID(w.KeyAck.ID)
}

// ParseKeyConfirm parses a key_confirm body strictly.
func ParseKeyConfirm(b []byte) (KeyConfirm, error) {
	var w struct {
		KeyConfirm *KeyConfirm `json:"key_confirm"`
	}
	if err := strict(b, &w); err != nil || w.KeyConfirm == nil {
		return KeyConfirm{}, fmt.Errorf("%w: key_confirm: %v", ErrBadBody, err)
	}
	return *w.KeyConfirm, checkRotationID(w.KeyConfirm.ID)
}

func checkRotationID(id string) error {
	if len(id) == 0 || len(id) > MaxRotationIDLen {
		return fmt.Errorf("%w: id must be 1-%d bytes", ErrBadBody, MaxRotationIDLen)
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return fmt.Errorf("%w: id must be printable ASCII without spaces", ErrBadBody)
		}
	}
	return nil
}

func strict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("data after the object")
	}
	return nil
}
