package broker

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/ecowatt/ecowatt/topics"
)

// wireClient speaks MQTT bytes to the broker, so a test sees the exact
// packets a firmware client would (PROTOCOL.md section 1.3).
type wireClient struct {
	t  *testing.T
	c  net.Conn
	r  *bufio.Reader
	v5 bool
}

func dialRaw(t *testing.T, tb *testBroker, v5 bool, clientID, user, password string) (*wireClient, byte) {
	t.Helper()
	return dialRawWill(t, tb, v5, clientID, user, password, "", false)
}

// dialRawWill is dialRaw with a will on willTopic (none when empty).
func dialRawWill(t *testing.T, tb *testBroker, v5 bool, clientID, user, password, willTopic string, willRetain bool) (*wireClient, byte) {
	t.Helper()
	c, err := net.Dial("tcp", tb.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	rc := &wireClient{t: t, c: c, r: bufio.NewReader(c), v5: v5}
	var ver byte = 4
	if v5 {
		ver = 5
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: ver,
		Connect: packets.ConnectParams{ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: clientID,
			UsernameFlag: true, Username: []byte(user), PasswordFlag: password != "", Password: []byte(password),
			WillFlag: willTopic != "", WillTopic: willTopic, WillPayload: []byte(`{"online":false}`), WillQos: 1, WillRetain: willRetain}}
	var buf bytes.Buffer
	if err := pk.ConnectEncode(&buf); err != nil {
		t.Fatal(err)
	}
	rc.write(buf.Bytes())
	typ, body := rc.read()
	if typ != packets.Connack || len(body) < 2 {
		t.Fatalf("want CONNACK, got type %d %x", typ, body)
	}
	return rc, body[1] // the return code (v3) or reason code (v5)
}

func (rc *wireClient) write(b []byte) {
	rc.t.Helper()
	_ = rc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatal(err)
	}
}

// read returns the next packet's type and body; type 0 means the broker
// closed the connection.
func (rc *wireClient) read() (byte, []byte) {
	rc.t.Helper()
	_ = rc.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, err := rc.r.ReadByte()
	if errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) || isReset(err) {
		return 0, nil
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	n, mul := 0, 1
	for {
		b, err := rc.r.ReadByte()
		if err != nil {
			rc.t.Fatal(err)
		}
		n += int(b&0x7f) * mul
		if b&0x80 == 0 {
			break
		}
		mul <<= 7
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		rc.t.Fatal(err)
	}
	return h >> 4, body
}

func isReset(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && !op.Timeout()
}

func (rc *wireClient) publish(topic string, qos byte, retain bool, id uint16) {
	rc.t.Helper()
	var ver byte = 4
	if rc.v5 {
		ver = 5
	}
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: qos, Retain: retain},
		ProtocolVersion: ver, TopicName: topic, PacketID: id, Payload: []byte("x")}
	var buf bytes.Buffer
	if err := pk.PublishEncode(&buf); err != nil {
		rc.t.Fatal(err)
	}
	rc.write(buf.Bytes())
}

// closed reads until the connection ends and returns the packet types seen.
func (rc *wireClient) closed() []byte {
	rc.t.Helper()
	var seen []byte
	for range 4 {
		typ, _ := rc.read()
		if typ == 0 {
			return seen
		}
		seen = append(seen, typ)
	}
	rc.t.Fatalf("connection still open after packets %v", seen)
	return nil
}

// TestWireBehaviour pins what PROTOCOL.md section 1 tells firmware authors
// about refusals, byte for byte.
func TestWireBehaviour(t *testing.T) {
	tb := startBroker(t, nil, "d1", "d2")
	own := topics.DeviceUp("d1", topics.KindTelemetry)
	foreign := topics.DeviceUp("d2", topics.KindTelemetry)

	t.Run("client id must equal the device id", func(t *testing.T) {
		for _, tc := range []struct {
			name, id string
			v5       bool
			code     byte
		}{
			{"v3 ESP-IDF default", "ESP32_A1B2C3", false, 0x02},
			{"v5 ESP-IDF default", "ESP32_A1B2C3", true, 0x85},
			{"v3 empty", "", false, 0x02},
			{"v5 empty", "", true, 0x85},
			{"v3 own id", "d1", false, 0x00},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, code := dialRaw(t, tb, tc.v5, tc.id, "d1", tb.auth.token("d1")); code != tc.code {
					t.Fatalf("CONNACK code 0x%02x, want 0x%02x", code, tc.code)
				}
			})
		}
	})
	t.Run("CONNACK codes", func(t *testing.T) {
		birth := topics.DeviceUp("d1", topics.KindBirth)
		for _, tc := range []struct {
			name, password, will string
			retain               bool
			v3, v5               byte
		}{
			{"wrong password", "v1.1.00", "", false, 0x05, 0x86},
			{"will on its birth topic", tb.auth.token("d1"), birth, false, 0x00, 0x00},
			{"will on another topic", tb.auth.token("d1"), own, false, 0x05, 0x87},
			{"retained will", tb.auth.token("d1"), birth, true, 0x05, 0x87},
		} {
			t.Run(tc.name, func(t *testing.T) {
				if _, code := dialRawWill(t, tb, false, "d1", "d1", tc.password, tc.will, tc.retain); code != tc.v3 {
					t.Errorf("v3 CONNACK 0x%02x, want 0x%02x", code, tc.v3)
				}
				if _, code := dialRawWill(t, tb, true, "d1", "d1", tc.password, tc.will, tc.retain); code != tc.v5 {
					t.Errorf("v5 CONNACK 0x%02x, want 0x%02x", code, tc.v5)
				}
			})
		}
	})
	t.Run("v3 QoS 1 publish outside the ACL disconnects", func(t *testing.T) {
		rc, code := dialRaw(t, tb, false, "d1", "d1", tb.auth.token("d1"))
		if code != 0 {
			t.Fatalf("CONNACK 0x%02x", code)
		}
		rc.publish(foreign, 1, false, 7)
		seen := rc.closed()
		for _, typ := range seen {
			if typ == packets.Puback {
				t.Fatal("v3 client got a PUBACK for a refused publish")
			}
		}
		t.Logf("packets before the close: %v", seen)
	})
	t.Run("v5 QoS 1 publish outside the ACL gets PUBACK 0x87 and stays connected", func(t *testing.T) {
		rc, code := dialRaw(t, tb, true, "d1", "d1", tb.auth.token("d1"))
		if code != 0 {
			t.Fatalf("CONNACK 0x%02x", code)
		}
		rc.publish(foreign, 1, false, 7)
		typ, body := rc.read()
		if typ != packets.Puback || len(body) < 3 || body[0] != 0 || body[1] != 7 || body[2] != 0x87 {
			t.Fatalf("got type %d %x, want PUBACK id 7 reason 0x87", typ, body)
		}
		rc.publish(own, 1, false, 8)
		if typ, body := rc.read(); typ != packets.Puback || body[1] != 8 || (len(body) > 2 && body[2] != 0) {
			t.Fatalf("own topic after a refusal: type %d %x", typ, body)
		}
	})
	t.Run("QoS 0 publish outside the ACL is dropped silently", func(t *testing.T) {
		rc, _ := dialRaw(t, tb, false, "d1", "d1", tb.auth.token("d1"))
		rc.publish(foreign, 0, false, 0)
		rc.publish(own, 1, false, 9)
		if typ, body := rc.read(); typ != packets.Puback || body[1] != 9 {
			t.Fatalf("type %d %x, want PUBACK 9 on a live connection", typ, body)
		}
	})
	for _, v5 := range []bool{false, true} {
		t.Run("retained publish closes the connection v5="+map[bool]string{false: "no", true: "yes"}[v5], func(t *testing.T) {
			rc, _ := dialRaw(t, tb, v5, "d1", "d1", tb.auth.token("d1"))
			rc.publish(own, 1, true, 3)
			for _, typ := range rc.closed() {
				if typ == packets.Puback {
					t.Fatal("retained publish acknowledged")
				}
			}
		})
	}
}
