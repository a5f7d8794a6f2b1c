package telemetry

// Register describes one inverter register: its code on the wire (the
// Modbus holding-register address), its alias used in config and commands,
// and how to scale its raw value (value = raw / Gain, in Unit).
type Register struct {
	Code        uint8
	Name        string // alias used in config_update.registers and commands
	Description string
	Unit        string
	Gain        float64
	Writable    bool
	Min, Max    uint16 // accepted raw range of a write; only for Writable
}

// Scale converts a raw register value to engineering units.
func (r Register) Scale(raw uint16) float64 { return float64(raw) / r.Gain }

// NumRegisters is the number of registers in the map; codes are 0..NumRegisters-1.
const NumRegisters = 10

// Register codes.
const (
	CodeVoltage     uint8 = 0
	CodeCurrent     uint8 = 1
	CodeFrequency   uint8 = 2
	CodePV1Voltage  uint8 = 3
	CodePV2Voltage  uint8 = 4
	CodePV1Current  uint8 = 5
	CodePV2Current  uint8 = 6
	CodeTemperature uint8 = 7
	CodeExportPower uint8 = 8
	CodeOutputPower uint8 = 9
)

// registerMap returns the register map (docs/PROTOCOL.md §11.1), indexed by
// code.
func registerMap() [NumRegisters]Register {
	return [NumRegisters]Register{
		{Code: 0, Name: "voltage", Description: "Vac1 L1 phase voltage", Unit: "V", Gain: 10},
		{Code: 1, Name: "current", Description: "Iac1 L1 phase current", Unit: "A", Gain: 10},
		{Code: 2, Name: "frequency", Description: "Fac1 L1 phase frequency", Unit: "Hz", Gain: 100},
		{Code: 3, Name: "pv1_voltage", Description: "Vpv1 PV1 input voltage", Unit: "V", Gain: 10},
		{Code: 4, Name: "pv2_voltage", Description: "Vpv2 PV2 input voltage", Unit: "V", Gain: 10},
		{Code: 5, Name: "pv1_current", Description: "Ipv1 PV1 input current", Unit: "A", Gain: 10},
		{Code: 6, Name: "pv2_current", Description: "Ipv2 PV2 input current", Unit: "A", Gain: 10},
		{Code: 7, Name: "temperature", Description: "Inverter internal temperature", Unit: "°C", Gain: 10},
		{Code: 8, Name: "export_power", Description: "Export power percentage", Unit: "%", Gain: 1, Writable: true, Min: 0, Max: 100},
		{Code: 9, Name: "output_power", Description: "Pac inverter output power", Unit: "W", Gain: 1},
	}
}

// Registers returns the register map ordered by code.
func Registers() []Register {
	m := registerMap()
	return m[:]
}

// RegisterByCode looks a register up by its code.
func RegisterByCode(code uint8) (Register, bool) {
	if code >= NumRegisters {
		return Register{}, false
	}
	return registerMap()[code], true
}

// RegisterByName looks a register up by its alias (e.g. "export_power").
func RegisterByName(name string) (Register, bool) {
	for _, r := range registerMap() {
		if r.Name == name {
			return r, true
		}
	}
	return Register{}, false
}
