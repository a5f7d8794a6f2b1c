package modbus

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func frame(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// goldenFrames are the course document's frames plus well-known public
// vectors and exception frames. Two course frames are printed with CRCs
// that are not CRC-16/Modbus of their bytes (see TestCourseErrata); the
// table holds them with the correct CRC, which the Modbus specification's
// own example (11 03 00 6B 00 03 76 87) confirms the algorithm against.
var goldenFrames = []struct {
	name  string
	hex   string
	build func() []byte
}{
	{"course read request", "11 03 00 6B 00 02 B7 47", func() []byte { return EncodeReadRequest(0x11, 0x6B, 2) }},
	{"course write request", "11 06 00 08 00 10 0B 54", func() []byte { return EncodeWriteRequest(0x11, 8, 0x10) }},
	{"course read response", "11 03 04 02 2B 00 64 9B A9", func() []byte { return EncodeReadResponse(0x11, []uint16{0x022B, 0x0064}) }},
	{"modbus spec read request", "11 03 00 6B 00 03 76 87", func() []byte { return EncodeReadRequest(0x11, 0x6B, 3) }},
	{"public read request", "01 03 00 00 00 0A C5 CD", func() []byte { return EncodeReadRequest(1, 0, 10) }},
	{"public exception illegal address", "01 83 02 C0 F1", func() []byte { return EncodeException(1, FuncReadHolding, ExIllegalAddress) }},
	{"exception illegal function", "11 C1 01 B1 95", func() []byte { return EncodeException(0x11, 0x41, ExIllegalFunction) }},
	{"exception illegal address", "11 83 02 C1 34", func() []byte { return EncodeException(0x11, FuncReadHolding, ExIllegalAddress) }},
	{"exception illegal value", "11 86 03 03 A4", func() []byte { return EncodeException(0x11, FuncWriteSingle, ExIllegalValue) }},
	{"exception device failure", "11 83 04 41 36", func() []byte { return EncodeException(0x11, FuncReadHolding, ExDeviceFailure) }},
}

func TestGoldenFrames(t *testing.T) {
	for _, tt := range goldenFrames {
		t.Run(tt.name, func(t *testing.T) {
			want := frame(t, tt.hex)
			if got := tt.build(); !bytes.Equal(got, want) {
				t.Fatalf("encoded % X, want % X", got, want)
			}
			if _, err := checkCRC(want); err != nil {
				t.Fatalf("golden frame fails CRC: %v", err)
			}
		})
	}
}

// TestCourseErrata pins that the course document prints two frames with
// CRCs that do not match their bytes: the codec must reject them as printed
// (a CRC check that accepted them would accept corrupt frames) while the
// bytes before the CRC are exactly what it encodes.
func TestCourseErrata(t *testing.T) {
	tests := []struct {
		name, printed string
		decode        func([]byte) error
		build         func() []byte
	}{
		{"read request", "11 03 00 6B 00 02 C4 0B",
			func(b []byte) error { _, err := DecodeRequest(b); return err },
			func() []byte { return EncodeReadRequest(0x11, 0x6B, 2) }},
		{"read response", "11 03 04 02 2B 00 64 85 DB",
			func(b []byte) error { _, err := DecodeReadResponse(b, 0x11, 2); return err },
			func() []byte { return EncodeReadResponse(0x11, []uint16{0x022B, 0x0064}) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			printed := frame(t, tt.printed)
			if err := tt.decode(printed); !errors.Is(err, ErrCRC) {
				t.Fatalf("printed frame: err = %v, want ErrCRC", err)
			}
			got := tt.build()
			if !bytes.Equal(got[:len(got)-2], printed[:len(printed)-2]) {
				t.Fatalf("encoded % X, printed % X", got, printed)
			}
		})
	}
}

func TestDecodeGolden(t *testing.T) {
	t.Run("read request", func(t *testing.T) {
		r, err := DecodeRequest(frame(t, "11 03 00 6B 00 02 B7 47"))
		if err != nil || r != (Request{Slave: 0x11, Func: FuncReadHolding, Addr: 0x6B, Value: 2}) {
			t.Fatalf("DecodeRequest = %+v, %v", r, err)
		}
	})
	t.Run("write request", func(t *testing.T) {
		r, err := DecodeRequest(frame(t, "11 06 00 08 00 10 0B 54"))
		if err != nil || r != (Request{Slave: 0x11, Func: FuncWriteSingle, Addr: 8, Value: 0x10}) {
			t.Fatalf("DecodeRequest = %+v, %v", r, err)
		}
	})
	t.Run("read response", func(t *testing.T) {
		v, err := DecodeReadResponse(frame(t, "11 03 04 02 2B 00 64 9B A9"), 0x11, 2)
		if err != nil || len(v) != 2 || v[0] != 555 || v[1] != 100 {
			t.Fatalf("DecodeReadResponse = %v, %v", v, err)
		}
	})
	t.Run("write echo", func(t *testing.T) {
		if err := DecodeWriteResponse(frame(t, "11 06 00 08 00 10 0B 54"), 0x11, 8, 0x10); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown function request", func(t *testing.T) {
		r, err := DecodeRequest(AppendCRC([]byte{0x11, 0x41, 1, 2, 3}))
		if err != nil || r != (Request{Slave: 0x11, Func: 0x41}) {
			t.Fatalf("DecodeRequest = %+v, %v", r, err)
		}
	})
}

func TestDecodeExceptions(t *testing.T) {
	for _, code := range []byte{ExIllegalFunction, ExIllegalAddress, ExIllegalValue, ExDeviceFailure} {
		t.Run(exceptionName(code), func(t *testing.T) {
			_, err := DecodeReadResponse(EncodeException(0x11, FuncReadHolding, code), 0x11, 2)
			var ex *ExceptionError
			if !errors.As(err, &ex) || ex.Code != code || ex.Func != FuncReadHolding {
				t.Fatalf("read: err = %v", err)
			}
			err = DecodeWriteResponse(EncodeException(0x11, FuncWriteSingle, code), 0x11, 8, 50)
			if !errors.As(err, &ex) || ex.Code != code || ex.Func != FuncWriteSingle {
				t.Fatalf("write: err = %v", err)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	resp := frame(t, "11 03 04 02 2B 00 64 9B A9")
	badCRC := bytes.Clone(resp)
	badCRC[len(badCRC)-1] ^= 1
	flipped := bytes.Clone(resp)
	flipped[4] ^= 0x10
	tests := []struct {
		name   string
		decode func() error
		want   error
	}{
		{"empty", func() error { _, err := DecodeReadResponse(nil, 0x11, 2); return err }, ErrFrame},
		{"three bytes", func() error { _, err := DecodeReadResponse(resp[:3], 0x11, 2); return err }, ErrFrame},
		{"bad crc", func() error { _, err := DecodeReadResponse(badCRC, 0x11, 2); return err }, ErrCRC},
		{"flipped data bit", func() error { _, err := DecodeReadResponse(flipped, 0x11, 2); return err }, ErrCRC},
		{"truncated", func() error { _, err := DecodeReadResponse(resp[:len(resp)-1], 0x11, 2); return err }, ErrCRC},
		{"wrong slave", func() error { _, err := DecodeReadResponse(resp, 0x12, 2); return err }, ErrFrame},
		{"wrong count", func() error { _, err := DecodeReadResponse(resp, 0x11, 3); return err }, ErrFrame},
		{"byte count disagrees with length", func() error {
			_, err := DecodeReadResponse(AppendCRC([]byte{0x11, 3, 4, 0, 1, 0, 2, 9}), 0x11, 2)
			return err
		}, ErrFrame},
		{"wrong function", func() error {
			_, err := DecodeReadResponse(frame(t, "11 06 00 08 00 10 0B 54"), 0x11, 2)
			return err
		}, ErrFrame},
		{"long exception", func() error {
			_, err := DecodeReadResponse(AppendCRC([]byte{0x11, 0x83, 2, 0}), 0x11, 2)
			return err
		}, ErrFrame},
		{"write echo mismatch", func() error {
			return DecodeWriteResponse(frame(t, "11 06 00 08 00 10 0B 54"), 0x11, 8, 0x11)
		}, ErrFrame},
		{"short write echo", func() error { return DecodeWriteResponse(AppendCRC([]byte{0x11, 6, 0, 8}), 0x11, 8, 0x10) }, ErrFrame},
		{"short read request", func() error { _, err := DecodeRequest(AppendCRC([]byte{0x11, 3, 0, 1})); return err }, ErrFrame},
		{"long write request", func() error {
			_, err := DecodeRequest(AppendCRC([]byte{0x11, 6, 0, 8, 0, 1, 0}))
			return err
		}, ErrFrame},
		{"request bad crc", func() error { _, err := DecodeRequest(frame(t, "11 03 00 6B 00 02 C4 0C")); return err }, ErrCRC},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.decode(); !errors.Is(err, tt.want) {
				t.Fatalf("err = %v, want %v", err, tt.want)
			}
		})
	}
}

func FuzzDecodeResponse(f *testing.F) {
	for _, g := range goldenFrames {
		f.Add(frame(f, g.hex), uint16(2))
	}
	f.Fuzz(func(t *testing.T, data []byte, count uint16) {
		count %= MaxReadCount + 1
		crcOK := len(data) >= minFrameLen && CRC(data[:len(data)-2]) == uint16(data[len(data)-2])|uint16(data[len(data)-1])<<8
		values, err := DecodeReadResponse(data, 0x11, count)
		if err == nil {
			if !crcOK {
				t.Fatal("accepted a read response with a bad CRC")
			}
			if !bytes.Equal(EncodeReadResponse(0x11, values), data) {
				t.Fatal("accepted response does not re-encode to itself")
			}
		}
		var ex *ExceptionError
		if errors.As(err, &ex) && !crcOK {
			t.Fatal("decoded an exception with a bad CRC")
		}
		if err := DecodeWriteResponse(data, 0x11, 8, 50); (err == nil || errors.As(err, &ex)) && !crcOK {
			t.Fatal("accepted a write response with a bad CRC")
		}
	})
}

func FuzzDecodeRequest(f *testing.F) {
	for _, g := range goldenFrames {
		f.Add(frame(f, g.hex))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := DecodeRequest(data)
		if err != nil {
			return
		}
		if CRC(data[:len(data)-2]) != uint16(data[len(data)-2])|uint16(data[len(data)-1])<<8 {
			t.Fatal("accepted a request with a bad CRC")
		}
		if r.Func == FuncReadHolding || r.Func == FuncWriteSingle {
			if !bytes.Equal(encodeRequest(r.Slave, r.Func, r.Addr, r.Value), data) {
				t.Fatal("accepted request does not re-encode to itself")
			}
		}
	})
}
