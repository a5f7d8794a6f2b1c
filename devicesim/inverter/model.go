package inverter

import (
	"math"
	"time"

	"github.com/ecowatt/ecowatt/topics/telemetry"
)

// model computes register values as a pure function of the time, the seed
// and the export limit, so a run is reproducible whatever the read order.
//
// PV power follows a half-sine from 06:00 to 18:00 (UTC of the clock),
// scaled by a cloud factor that moves smoothly between seeded knots every
// ten minutes. Output power is the PV power after 97 % conversion, capped
// at rated power times the export limit. Mains voltage and frequency
// jitter around 230 V and 50 Hz; the temperature follows output power.
type model struct {
	seed   uint64
	ratedW float64
}

const (
	cloudKnot  = 10 * time.Minute
	efficiency = 0.97
)

func (m model) values(now time.Time, exportPct uint16) [telemetry.NumRegisters]uint16 {
	sec := now.Unix()
	noise := func(stream uint64, amp float64) float64 {
		return (unit(m.seed, stream, uint64(sec))*2 - 1) * amp
	}
	pv := m.irradiance(now)
	dcW := pv * m.ratedW * 1.1 // DC array oversized 10 %
	// Each string's voltage rises quickly with light and sags with heat.
	vpv := func(stream uint64, nominal float64) float64 {
		if pv <= 0 {
			return 0
		}
		return nominal*(0.85+0.15*math.Sqrt(pv)) + noise(stream, 1.5)
	}
	vpv1, vpv2 := vpv(3, 360), vpv(4, 350)
	share := 0.5 + 0.02*math.Sin(float64(sec)/900) // strings differ a little
	ipv := func(w, v float64) float64 {
		if v <= 0 {
			return 0
		}
		return w / v
	}
	ipv1, ipv2 := ipv(dcW*share, vpv1), ipv(dcW*(1-share), vpv2)

	acW := dcW * efficiency
	if acW > 0 {
		acW = math.Max(0, acW+noise(9, 3))
	}
	acW = math.Min(acW, m.ratedW*float64(exportPct)/100)
	vac := 230 + noise(0, 1.5)
	iac := acW / vac
	hz := 50 + noise(2, 0.03)
	temp := 25 + 5*math.Sin(float64(sec%86400)/86400*2*math.Pi-math.Pi/2) + 25*acW/m.ratedW + noise(7, 0.3)

	return [telemetry.NumRegisters]uint16{
		raw(vac, 10), raw(iac, 10), raw(hz, 100),
		raw(vpv1, 10), raw(vpv2, 10), raw(ipv1, 10), raw(ipv2, 10),
		raw(temp, 10), exportPct, raw(acW, 1),
	}
}

// irradiance is the PV availability in [0, 1] at t.
func (m model) irradiance(t time.Time) float64 {
	day := t.UTC()
	h := float64(day.Hour()) + float64(day.Minute())/60 + float64(day.Second())/3600
	if h <= 6 || h >= 18 {
		return 0
	}
	sun := math.Sin(math.Pi * (h - 6) / 12)
	knot := t.Unix() / int64(cloudKnot/time.Second)
	frac := float64(t.Unix()%int64(cloudKnot/time.Second)) / cloudKnot.Seconds()
	c0 := 0.55 + 0.45*unit(m.seed, 100, uint64(knot))
	c1 := 0.55 + 0.45*unit(m.seed, 100, uint64(knot+1))
	return sun * (c0 + (c1-c0)*frac)
}

// raw converts v to a raw register value with gain, clamped to uint16.
func raw(v, gain float64) uint16 {
	return uint16(math.Max(0, math.Min(65535, math.Round(v*gain))))
}

// unit hashes (seed, stream, x) to a float in [0, 1) with splitmix64.
func unit(seed, stream, x uint64) float64 {
	z := seed ^ stream*0x9E3779B97F4A7C15 ^ x*0xBF58476D1CE4E5B9
	z = (z ^ z>>30) * 0xBF58476D1CE4E5B9
	z = (z ^ z>>27) * 0x94D049BB133111EB
	z ^= z >> 31
	return float64(z>>11) / (1 << 53)
}
