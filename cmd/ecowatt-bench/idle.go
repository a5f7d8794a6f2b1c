package main

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"time"
)

// runIdle is `ecowatt-bench idle`: the memory one idle MQTT connection
// costs a broker (issue 14). It reads the broker's RSS from /proc, opens n
// connections (CONNECT with the credentials of --creds, cycling through
// them with distinct client IDs when n is larger), holds them, reads the
// RSS again and prints KiB per connection. Mosquitto is measured this way
// beside `ecowatt serve`'s fleet figure in scripts/bench-mem.sh.
func runIdle(ctx context.Context, e env, args []string) error {
	fs := newFlags(e, "idle", "idle --url tcp://127.0.0.1:PORT --creds FILE --pid PID [flags]")
	url := fs.String("url", "", "broker URL, tcp://127.0.0.1:PORT (loopback only)")
	creds := fs.String("creds", "", "ID:password file (mosquitto-conf's devices.txt)")
	pid := fs.Int("pid", 0, "the broker's process ID, for its RSS")
	n := fs.Int("n", 1000, "connections")
	hold := fs.Duration("hold", 5*time.Second, "how long to hold the connections before reading the RSS")
	if err := fs.Parse(args); err != nil {
		return err
	}
	addr, ok := strings.CutPrefix(*url, "tcp://")
	if !ok || *creds == "" || *pid <= 0 || *n <= 0 {
		return usageError{"idle: give --url tcp://HOST:PORT, --creds FILE, --pid PID and --n > 0"}
	}
	if err := loopbackOnly(addr); err != nil {
		return err
	}
	pw, ids, err := readCreds(*creds)
	if err != nil {
		return err
	}
	if len(ids) == 0 {
		return fmt.Errorf("idle: no credentials in %s", *creds)
	}
	raiseFileLimit()
	before, err := procStat(*pid)
	if err != nil {
		return err
	}
	conns := make([]net.Conn, 0, *n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	start := time.Now()
	for i := range *n {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		id := ids[i%len(ids)]
		c, err := idleConnect(addr, id, fmt.Sprintf("%s-idle-%d", id, i), pw[id])
		if err != nil {
			return fmt.Errorf("idle: connection %d (%s): %w", i, id, err)
		}
		conns = append(conns, c)
	}
	took := time.Since(start)
	sleepCtx(ctx, *hold)
	after, err := procStat(*pid)
	if err != nil {
		return err
	}
	per := float64(after.RSSKiB-before.RSSKiB) / float64(*n)
	fmt.Fprintf(e.stdout, "idle: %d connections in %.1fs; RSS %d -> %d KiB: %.2f KiB per connection\n",
		*n, took.Seconds(), before.RSSKiB, after.RSSKiB, per)
	return nil
}

// loopbackOnly refuses a broker address that is not on loopback.
func loopbackOnly(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usageError{fmt.Sprintf("idle: %q: %v", addr, err)}
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return usageError{fmt.Sprintf("idle: %q is not a loopback address", addr)}
	}
	return nil
}

// idleConnect opens one MQTT 3.1.1 connection (clean session, keepalive
// 300 s) and waits for a successful CONNACK.
func idleConnect(addr, user, clientID, password string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return nil, err
	}
	str := func(b []byte, s string) []byte { return append(binary.BigEndian.AppendUint16(b, uint16(len(s))), s...) }
	body := str(nil, "MQTT")
	body = append(body, 4, 0xC2, 0x01, 0x2C) // level 4; username, password, clean; keepalive 300 s
	body = str(str(str(body, clientID), user), password)
	pk := []byte{0x10}
	for l := len(body); ; {
		b := byte(l % 128)
		if l /= 128; l > 0 {
			pk = append(pk, b|0x80)
			continue
		}
		pk = append(pk, b)
		break
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(append(pk, body...)); err != nil {
		c.Close()
		return nil, err
	}
	var ack [4]byte
	if _, err := io.ReadFull(bufio.NewReader(c), ack[:]); err != nil {
		c.Close()
		return nil, fmt.Errorf("no CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		c.Close()
		return nil, errors.New("connection refused: CONNACK " + fmt.Sprintf("% x", ack))
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}
