package route

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// A frame is one message between replicas:
//
//	version (1, 0x01) | kind (1) | qos (1) | len(origin) (1) | origin | uvarint len(topic) | topic | payload
//
// The payload is the bytes the local broker publishes (a sealed envelope,
// binary for FOTA chunks, or an event's JSON); for a close request the
// topic is the device ID and the payload the new generation (8 bytes,
// big-endian); for a forget the topic is the device ID and the payload
// empty, or the reason to close its session with.
type frame struct {
	kind    byte
	qos     byte
	origin  string // the replica that sent it
	topic   string
	payload []byte
}

const (
	frameVersion = 1

	kindDown   = 'd' // a downlink for a device this replica holds
	kindEvent  = 'e' // an event for this replica's observers
	kindClose  = 'c' // close this device's connections older than a generation
	kindForget = 'f' // drop this device's cached keys (and close its session, with a reason)
)

func encode(f frame) []byte {
	b := make([]byte, 0, 4+len(f.origin)+binary.MaxVarintLen32+len(f.topic)+len(f.payload))
	b = append(b, frameVersion, f.kind, f.qos, byte(len(f.origin)))
	b = append(b, f.origin...)
	b = binary.AppendUvarint(b, uint64(len(f.topic)))
	b = append(b, f.topic...)
	return append(b, f.payload...)
}

var errFrame = errors.New("bad route frame")

func decode(b []byte) (frame, error) {
	if len(b) < 4 || b[0] != frameVersion {
		return frame{}, fmt.Errorf("%w: short or unknown version", errFrame)
	}
	f := frame{kind: b[1], qos: b[2]}
	if f.qos > 2 {
		return frame{}, fmt.Errorf("%w: qos %d", errFrame, f.qos)
	}
	switch f.kind {
	case kindDown, kindEvent, kindClose, kindForget:
	default:
		return frame{}, fmt.Errorf("%w: kind %q", errFrame, f.kind)
	}
	n := int(b[3])
	b = b[4:]
	if len(b) < n {
		return frame{}, fmt.Errorf("%w: origin", errFrame)
	}
	f.origin, b = string(b[:n]), b[n:]
	tl, k := binary.Uvarint(b)
	if k <= 0 || tl > uint64(len(b)-k) {
		return frame{}, fmt.Errorf("%w: topic", errFrame)
	}
	b = b[k:]
	f.topic, f.payload = string(b[:tl]), b[tl:]
	if f.topic == "" {
		return frame{}, fmt.Errorf("%w: empty topic", errFrame)
	}
	if f.kind == kindClose && len(f.payload) != 8 {
		return frame{}, fmt.Errorf("%w: close generation", errFrame)
	}
	return f, nil
}
