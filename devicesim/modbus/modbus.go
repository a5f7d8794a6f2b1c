// Package modbus is a Modbus RTU codec and client for the EcoWatt device:
// CRC-16/Modbus, read holding registers (0x03), write single register (0x06)
// and exception frames, plus a Client that talks to a slave over a Transport
// with per-request timeouts, retries and error counters.
//
// Every frame ends with the CRC-16/Modbus (poly 0xA001 reflected, init
// 0xFFFF) of the preceding bytes, low byte first. Decoders check the CRC
// before anything else and never return a value from a frame that fails it.
package modbus

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Function codes.
const (
	FuncReadHolding byte = 0x03 // read holding registers
	FuncWriteSingle byte = 0x06 // write single register
	exceptionBit    byte = 0x80 // set in the function code of an exception
)

// Exception codes.
const (
	ExIllegalFunction byte = 0x01
	ExIllegalAddress  byte = 0x02
	ExIllegalValue    byte = 0x03
	ExDeviceFailure   byte = 0x04
)

// MaxReadCount is the most registers one 0x03 request may ask for.
const MaxReadCount = 125

// Frame lengths, CRC included.
const (
	requestLen   = 8 // slave, func, addr(2), count|value(2), crc(2)
	exceptionLen = 5 // slave, func|0x80, code, crc(2)
	minFrameLen  = 4 // slave, func, crc(2)
)

// ErrCRC means a frame's CRC does not match its bytes.
var ErrCRC = errors.New("modbus: crc mismatch")

// ErrFrame means a frame with a valid CRC has the wrong length, slave
// address, function code or byte count for what was expected.
var ErrFrame = errors.New("modbus: malformed frame")

// ExceptionError is a slave's exception response.
type ExceptionError struct {
	Func byte // the function code of the request (without 0x80)
	Code byte // ExIllegalFunction, ExIllegalAddress, ...
}

func (e *ExceptionError) Error() string {
	return fmt.Sprintf("modbus: exception %02X (%s) for function %02X", e.Code, exceptionName(e.Code), e.Func)
}

func exceptionName(code byte) string {
	switch code {
	case ExIllegalFunction:
		return "illegal function"
	case ExIllegalAddress:
		return "illegal data address"
	case ExIllegalValue:
		return "illegal data value"
	case ExDeviceFailure:
		return "slave device failure"
	}
	return "unknown"
}

// CRC returns the CRC-16/Modbus of b.
func CRC(b []byte) uint16 {
	crc := uint16(0xFFFF)
	for _, c := range b {
		crc ^= uint16(c)
		for range 8 {
			if crc&1 != 0 {
				crc = crc>>1 ^ 0xA001
			} else {
				crc >>= 1
			}
		}
	}
	return crc
}

// AppendCRC appends the CRC of b to b, low byte first.
func AppendCRC(b []byte) []byte {
	return binary.LittleEndian.AppendUint16(b, CRC(b))
}

// checkCRC verifies the trailing CRC and returns the frame without it.
func checkCRC(frame []byte) ([]byte, error) {
	if len(frame) < minFrameLen {
		return nil, fmt.Errorf("%w: %d bytes, shorter than %d", ErrFrame, len(frame), minFrameLen)
	}
	body := frame[:len(frame)-2]
	got := binary.LittleEndian.Uint16(frame[len(frame)-2:])
	if want := CRC(body); got != want {
		return nil, fmt.Errorf("%w: got %04X, want %04X", ErrCRC, got, want)
	}
	return body, nil
}

// Request is a decoded request frame as a slave sees it. For FuncReadHolding
// Value is the register count; for FuncWriteSingle it is the value to write.
// For any other function only Slave and Func are set.
type Request struct {
	Slave byte
	Func  byte
	Addr  uint16
	Value uint16
}

// EncodeReadRequest builds a 0x03 request for count registers from addr.
func EncodeReadRequest(slave byte, addr, count uint16) []byte {
	return encodeRequest(slave, FuncReadHolding, addr, count)
}

// EncodeWriteRequest builds a 0x06 request writing value at addr. The
// normal response is the same frame echoed.
func EncodeWriteRequest(slave byte, addr, value uint16) []byte {
	return encodeRequest(slave, FuncWriteSingle, addr, value)
}

func encodeRequest(slave, fn byte, addr, v uint16) []byte {
	b := make([]byte, 0, requestLen)
	b = append(b, slave, fn)
	b = binary.BigEndian.AppendUint16(b, addr)
	b = binary.BigEndian.AppendUint16(b, v)
	return AppendCRC(b)
}

// EncodeReadResponse builds a 0x03 response carrying values.
func EncodeReadResponse(slave byte, values []uint16) []byte {
	b := make([]byte, 0, 5+2*len(values))
	b = append(b, slave, FuncReadHolding, byte(2*len(values)))
	for _, v := range values {
		b = binary.BigEndian.AppendUint16(b, v)
	}
	return AppendCRC(b)
}

// EncodeException builds an exception response for function fn.
func EncodeException(slave, fn, code byte) []byte {
	return AppendCRC([]byte{slave, fn | exceptionBit, code})
}

// DecodeRequest decodes a request frame. Read and write requests must be
// exactly 8 bytes; frames of other functions are returned with only Slave and
// Func set, so that a slave can answer them with ExIllegalFunction.
func DecodeRequest(frame []byte) (Request, error) {
	body, err := checkCRC(frame)
	if err != nil {
		return Request{}, err
	}
	r := Request{Slave: body[0], Func: body[1]}
	switch r.Func {
	case FuncReadHolding, FuncWriteSingle:
		if len(frame) != requestLen {
			return Request{}, fmt.Errorf("%w: function %02X request is %d bytes, want %d", ErrFrame, r.Func, len(frame), requestLen)
		}
		r.Addr = binary.BigEndian.Uint16(body[2:])
		r.Value = binary.BigEndian.Uint16(body[4:])
	}
	return r, nil
}

// checkResponse verifies CRC, slave and function of a response and turns an
// exception frame into an *ExceptionError. It returns the body without CRC.
func checkResponse(frame []byte, slave, fn byte) ([]byte, error) {
	body, err := checkCRC(frame)
	if err != nil {
		return nil, err
	}
	if body[0] != slave {
		return nil, fmt.Errorf("%w: slave %02X, want %02X", ErrFrame, body[0], slave)
	}
	switch body[1] {
	case fn:
		return body, nil
	case fn | exceptionBit:
		if len(frame) != exceptionLen {
			return nil, fmt.Errorf("%w: exception frame is %d bytes, want %d", ErrFrame, len(frame), exceptionLen)
		}
		return nil, &ExceptionError{Func: fn, Code: body[2]}
	}
	return nil, fmt.Errorf("%w: function %02X, want %02X", ErrFrame, body[1], fn)
}

// DecodeReadResponse decodes the response to a 0x03 request for count
// registers from slave. An exception response yields an *ExceptionError.
func DecodeReadResponse(frame []byte, slave byte, count uint16) ([]uint16, error) {
	body, err := checkResponse(frame, slave, FuncReadHolding)
	if err != nil {
		return nil, err
	}
	if len(body) < 3 {
		return nil, fmt.Errorf("%w: read response without byte count", ErrFrame)
	}
	n := int(body[2])
	if n != 2*int(count) || len(body) != 3+n {
		return nil, fmt.Errorf("%w: read response byte count %d in %d-byte frame, want %d registers", ErrFrame, n, len(frame), count)
	}
	values := make([]uint16, count)
	for i := range values {
		values[i] = binary.BigEndian.Uint16(body[3+2*i:])
	}
	return values, nil
}

// DecodeWriteResponse decodes the response to a 0x06 request: the request
// echoed. An exception response yields an *ExceptionError.
func DecodeWriteResponse(frame []byte, slave byte, addr, value uint16) error {
	body, err := checkResponse(frame, slave, FuncWriteSingle)
	if err != nil {
		return err
	}
	if len(frame) != requestLen {
		return fmt.Errorf("%w: write response is %d bytes, want %d", ErrFrame, len(frame), requestLen)
	}
	gotAddr, gotValue := binary.BigEndian.Uint16(body[2:]), binary.BigEndian.Uint16(body[4:])
	if gotAddr != addr || gotValue != value {
		return fmt.Errorf("%w: write echo %d=%d, want %d=%d", ErrFrame, gotAddr, gotValue, addr, value)
	}
	return nil
}
