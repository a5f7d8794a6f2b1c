package devicesim

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ecowatt/ecowatt/devicesim/flash"
	"github.com/ecowatt/ecowatt/devicesim/modbus"
	"github.com/ecowatt/ecowatt/topics"
	"github.com/ecowatt/ecowatt/topics/telemetry"
)

func cmdBody(c topics.Command) topics.CommandBody { return topics.CommandBody{Command: &c} }

func intPtr(v int) *int { return &v }

// exportPower is the inverter's export_power register now.
func (g *rig) exportPower() uint16 {
	return g.f.Telemetry.Inverter.Values()[telemetry.CodeExportPower]
}

// setExportPower changes the inverter's register behind the device's back.
func (g *rig) setExportPower(v uint16) {
	g.t.Helper()
	resp, err := g.f.Telemetry.Inverter.Handle(modbus.EncodeWriteRequest(modbus.DefaultSlave, uint16(telemetry.CodeExportPower), v))
	if err != nil || len(resp) == 0 {
		g.t.Fatalf("set export power: %v", err)
	}
}

// TestCommands: a write goes through Modbus and is read back; reads,
// pings, expired and invalid commands are answered; a duplicate is never
// executed again, before or after a power cycle; reboot increases the
// boot count once.
func TestCommands(t *testing.T) {
	g := newRig(t, "cmd-1", 31)
	g.boot(nil)
	exp := g.clk.Now().Add(10 * time.Minute)
	write := topics.Command{ID: "c-write", Action: topics.ActionWriteRegister, TargetRegister: "export_power", Value: intPtr(50), ExpiresAt: exp}

	g.send(topics.KindCommand, cmdBody(write))
	r := g.result(1)
	if r.ID != "c-write" || r.Status != topics.ResultSuccess || r.Value == nil || *r.Value != 50 || r.Duplicate || r.ExecutedAt.IsZero() {
		t.Fatalf("write result = %+v", r)
	}
	if g.exportPower() != 50 || g.f.Commands.Stats().Writes != 1 {
		t.Fatalf("inverter export power %d, writes %d", g.exportPower(), g.f.Commands.Stats().Writes)
	}

	cases := []struct {
		cmd    topics.Command
		status string
		value  int    // -1: no value
		reason string // substring of the error
	}{
		{topics.Command{ID: "c-read", Action: topics.ActionReadRegister, TargetRegister: "export_power", ExpiresAt: exp}, topics.ResultSuccess, 50, ""},
		{topics.Command{ID: "c-ping", Action: topics.ActionPing, ExpiresAt: exp}, topics.ResultSuccess, -1, ""},
		{topics.Command{ID: "c-expired", Action: topics.ActionWriteRegister, TargetRegister: "export_power", Value: intPtr(10),
			ExpiresAt: g.clk.Now().Add(-time.Second)}, topics.ResultFailed, -1, ReasonExpired},
		{topics.Command{ID: "c-readonly", Action: topics.ActionWriteRegister, TargetRegister: "voltage", Value: intPtr(1), ExpiresAt: exp},
			topics.ResultFailed, -1, "read-only"},
		{topics.Command{ID: "c-unknown", Action: topics.ActionReadRegister, TargetRegister: "watts", ExpiresAt: exp},
			topics.ResultFailed, -1, "unknown register"},
		{topics.Command{ID: "c-range", Action: topics.ActionWriteRegister, TargetRegister: "export_power", Value: intPtr(101), ExpiresAt: exp},
			topics.ResultFailed, -1, "out of range"},
		{topics.Command{ID: "c-action", Action: "selfdestruct", ExpiresAt: exp}, topics.ResultFailed, -1, "unknown action"},
	}
	for i, tc := range cases {
		g.send(topics.KindCommand, cmdBody(tc.cmd))
		r := g.result(2 + i)
		ok := r.ID == tc.cmd.ID && r.Status == tc.status && strings.Contains(r.Error, tc.reason) &&
			(tc.value < 0 && r.Value == nil || tc.value >= 0 && r.Value != nil && *r.Value == tc.value)
		if !ok {
			t.Errorf("%s: result %+v, want %s %d %q", tc.cmd.ID, r, tc.status, tc.value, tc.reason)
		}
	}
	if g.exportPower() != 50 || g.f.Commands.Stats().Writes != 1 {
		t.Fatalf("a rejected command reached the inverter: export %d", g.exportPower())
	}

	// A duplicate: the stored result, not a second write (the register was
	// changed behind the device's back and stays so).
	g.setExportPower(70)
	got := len(g.bodies(topics.KindCommandResult))
	g.send(topics.KindCommand, cmdBody(write))
	r = g.result(got + 1)
	if !r.Duplicate || r.Status != topics.ResultSuccess || *r.Value != 50 || g.exportPower() != 70 || g.f.Commands.Stats().Writes != 1 {
		t.Fatalf("duplicate: result %+v, export %d, stats %+v", r, g.exportPower(), g.f.Commands.Stats())
	}

	// After a power cycle (new inverter at 100 %) the ID is still known.
	g.r.stop(t)
	g.boot(nil)
	got = len(g.bodies(topics.KindCommandResult))
	g.send(topics.KindCommand, cmdBody(write))
	r = g.result(got + 1)
	if !r.Duplicate || r.Status != topics.ResultSuccess || g.exportPower() != 100 || g.f.Commands.Stats().Writes != 0 {
		t.Fatalf("duplicate after power cycle: result %+v, export %d, stats %+v", r, g.exportPower(), g.f.Commands.Stats())
	}

	// Reboot: answered, then the device restarts; a redelivery does not
	// reboot it again.
	boots := g.d.Stats().BootCount
	births := len(g.b.signedBirths(g.id, g.keys))
	reboot := topics.Command{ID: "c-reboot", Action: topics.ActionReboot, ExpiresAt: exp}
	g.send(topics.KindCommand, cmdBody(reboot))
	r = g.result(got + 2)
	if r.ID != "c-reboot" || r.Status != topics.ResultSuccess || r.Duplicate {
		t.Fatalf("reboot result = %+v", r)
	}
	eventually(t, "birth after reboot", func() bool { return len(g.b.signedBirths(g.id, g.keys)) == births+1 })
	all := g.b.signedBirths(g.id, g.keys)
	if b := all[len(all)-1]; b.BootCount != boots+1 {
		t.Fatalf("boot count after reboot %d, want %d", b.BootCount, boots+1)
	}
	g.send(topics.KindCommand, cmdBody(reboot))
	r = g.result(got + 3)
	if !r.Duplicate || g.d.Stats().BootCount != boots+1 {
		t.Fatalf("redelivered reboot: %+v, boot count %d", r, g.d.Stats().BootCount)
	}
	time.Sleep(100 * time.Millisecond)
	if n := len(g.b.signedBirths(g.id, g.keys)); n != births+1 {
		t.Fatalf("redelivered reboot rebooted again: %d births", n)
	}
	g.r.stop(t)
	checkNoLeak(t)
}

// TestCommandInterrupted cuts the power after a write reached the
// inverter but before its result was persisted: after the restart the
// command is reported failed "interrupted" and not written again.
func TestCommandInterrupted(t *testing.T) {
	g := newRig(t, "cmd-2", 32)
	fl, err := flash.Open(g.dir)
	if err != nil {
		t.Fatal(err)
	}
	cut := &flash.PowerCut{Prefix: RecordCommands, Step: flash.StepRename, N: 2} // 1: marker, 2: result
	fl.SetFault(cut.Fault)
	g.boot(fl)
	write := topics.Command{ID: "w1", Action: topics.ActionWriteRegister, TargetRegister: "export_power", Value: intPtr(30),
		ExpiresAt: g.clk.Now().Add(time.Hour)}
	g.send(topics.KindCommand, cmdBody(write))
	eventually(t, "power cut", cut.Hit)
	eventually(t, "handler error", func() bool { return g.d.Stats().HandlerErrors == 1 })
	if g.exportPower() != 30 || len(g.bodies(topics.KindCommandResult)) != 0 {
		t.Fatalf("export %d, results %d", g.exportPower(), len(g.bodies(topics.KindCommandResult)))
	}
	g.r.stop(t)

	cut.Restore()
	g.boot(nil)
	if s := g.f.Commands.Stats(); s.Interrupted != 1 {
		t.Fatalf("stats after restart = %+v", s)
	}
	g.send(topics.KindCommand, cmdBody(write))
	r := g.result(1)
	if !r.Duplicate || r.Status != topics.ResultFailed || r.Error != ReasonInterrupted {
		t.Fatalf("result = %+v", r)
	}
	if g.exportPower() != 100 || g.f.Commands.Stats().Writes != 0 {
		t.Fatalf("interrupted write executed again: export %d", g.exportPower())
	}
	g.r.stop(t)
}

// fakeIO is a RegisterIO with scripted failures.
type fakeIO struct {
	regs     [telemetry.NumRegisters]uint16
	writeErr error
	readErr  error
	sticky   bool // writes are acknowledged but not stored
}

func (f *fakeIO) ReadRegisters(_ context.Context, addr, count uint16) ([]uint16, error) {
	if f.readErr != nil {
		return nil, f.readErr
	}
	return append([]uint16(nil), f.regs[addr:addr+count]...), nil
}

func (f *fakeIO) WriteRegister(_ context.Context, addr, value uint16) error {
	if f.writeErr != nil {
		return f.writeErr
	}
	if !f.sticky {
		f.regs[addr] = value
	}
	return nil
}

// TestCommandExecutor runs the executor without a broker: Modbus failures
// become failed results with a reason, and the ID memory is bounded.
func TestCommandExecutor(t *testing.T) {
	d, err := New(Config{ID: "cmd-3", Key: testKey(33), Broker: "tcp://127.0.0.1:1", StateDir: t.TempDir(), Log: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	fio := &fakeIO{}
	var io RegisterIO = fio
	e, err := AttachCommands(d, CommandOptions{Modbus: func() RegisterIO { return io }, Recent: 3})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	write := func(id string) topics.Command {
		return topics.Command{ID: id, Action: topics.ActionWriteRegister, TargetRegister: "export_power", Value: intPtr(40)}
	}
	for _, tc := range []struct {
		name   string
		setup  func()
		reason string
	}{
		{"exception", func() { fio.writeErr = fmt.Errorf("modbus: write: %w", &modbus.ExceptionError{Func: 6, Code: 3}) },
			"modbus exception 03 illegal data value"},
		{"timeout", func() { fio.writeErr = fmt.Errorf("timeout after 1s: %w", context.DeadlineExceeded) }, "modbus timeout"},
		{"read-back fails", func() { fio.writeErr, fio.readErr = nil, &modbus.ExceptionError{Func: 3, Code: 4} },
			"read back: modbus exception 04 slave device failure"},
		{"read-back differs", func() { fio.readErr, fio.sticky, fio.regs[8] = nil, true, 0 }, "read back 0 after writing 40"},
		{"no adapter", func() { io = nil }, "not ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup()
			res, reboot, err := e.run(ctx, write(strings.ReplaceAll(tc.name, " ", "-")))
			if err != nil || reboot || res.Status != topics.ResultFailed || !strings.Contains(res.Error, tc.reason) {
				t.Fatalf("run = %+v, %v, %v; want failed %q", res, reboot, err, tc.reason)
			}
		})
	}
	// Only the last 3 results are remembered, on flash too.
	if _, ok := e.Result("exception"); ok {
		t.Error("oldest result still known")
	}
	if r, ok := e.Result("no-adapter"); !ok || r.Status != topics.ResultFailed {
		t.Errorf("latest result = %+v, %v", r, ok)
	}
	e2, err := AttachCommands(d, CommandOptions{Recent: 3})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := e2.Result("read-back-fails"); !ok {
		t.Error("results not reloaded from flash")
	}
	if _, ok := e2.Result("timeout"); ok {
		t.Error("flash holds more than 3 results")
	}
}

func TestDecodeCommand(t *testing.T) {
	for _, body := range []string{
		`{"command":{"id":"x","action":"ping"}} {}`,
		`{"command":{"id":"x","action":"ping","colour":1}}`,
		`{"cmd":{"id":"x"}}`,
		`{"command":{"action":"ping"}}`,
		`{"command":{"id":"x","action":"ping","value":"1"}}`,
		`[]`,
	} {
		if _, err := decodeCommand([]byte(body)); err == nil {
			t.Errorf("decodeCommand(%s) accepted", body)
		}
	}
	c, err := decodeCommand([]byte(`{"command":{"id":"x","action":"write_register","target_register":"voltage","value":3,"expires_at":"2026-01-01T00:00:00Z"}}`))
	if err != nil || c.ID != "x" || *c.Value != 3 {
		t.Errorf("decodeCommand = %+v, %v (rule violations are answered, not dropped)", c, err)
	}
}
