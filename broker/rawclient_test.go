package broker

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
)

// rawClient speaks MQTT over a plain TCP connection with mochi's codec, to
// send what paho would not (MQTT 5, many filters in one SUBSCRIBE).
type rawClient struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	v    byte // protocol version: 4 or 5
}

// rawConnect connects and returns the client and the CONNACK reason code.
func rawConnect(t testing.TB, addr string, v byte, clientID, user, password string) (*rawClient, byte) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	rc := &rawClient{t: t, conn: conn, r: bufio.NewReader(conn), v: v}
	name := "MQTT"
	rc.write(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, ProtocolVersion: v,
		Connect: packets.ConnectParams{ProtocolName: []byte(name), Clean: true, Keepalive: 60, ClientIdentifier: clientID,
			UsernameFlag: user != "", Username: []byte(user), PasswordFlag: password != "", Password: []byte(password)}})
	pk, err := rc.read()
	if err != nil {
		return rc, 0xff // closed without a CONNACK
	}
	if pk.FixedHeader.Type != packets.Connack {
		t.Fatalf("got packet type %d, want CONNACK", pk.FixedHeader.Type)
	}
	return rc, pk.ReasonCode
}

// subscribe sends one SUBSCRIBE with filters at QoS 1 and returns the
// SUBACK's reason codes.
func (rc *rawClient) subscribe(id uint16, filters ...string) []byte {
	rc.t.Helper()
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, ProtocolVersion: rc.v, PacketID: id}
	for _, f := range filters {
		pk.Filters = append(pk.Filters, packets.Subscription{Filter: f, Qos: 1})
	}
	rc.write(pk)
	for {
		ack, err := rc.read()
		if err != nil {
			rc.t.Fatalf("read SUBACK: %v", err)
		}
		if ack.FixedHeader.Type == packets.Suback && ack.PacketID == id {
			return ack.ReasonCodes
		}
	}
}

func (rc *rawClient) write(pk packets.Packet) {
	rc.t.Helper()
	var buf bytes.Buffer
	var err error
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectEncode(&buf)
	case packets.Subscribe:
		err = pk.SubscribeEncode(&buf)
	default:
		err = fmt.Errorf("cannot encode type %d", pk.FixedHeader.Type)
	}
	if err != nil {
		rc.t.Fatal(err)
	}
	_ = rc.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := rc.conn.Write(buf.Bytes()); err != nil {
		rc.t.Fatal(err)
	}
}

func (rc *rawClient) read() (packets.Packet, error) {
	_ = rc.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	pk := packets.Packet{ProtocolVersion: rc.v}
	hb, err := rc.r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(hb); err != nil {
		return pk, err
	}
	n, mult := 0, 1
	for {
		b, err := rc.r.ReadByte()
		if err != nil {
			return pk, err
		}
		n += int(b&0x7f) * mult
		if b&0x80 == 0 {
			break
		}
		mult *= 128
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack:
		err = pk.ConnackDecode(body)
	case packets.Suback:
		err = pk.SubackDecode(body)
	}
	return pk, err
}
