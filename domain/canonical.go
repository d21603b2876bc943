package domain

import (
	"bytes"
	"errors"
	"slices"
	"sync"
)

// errNotCanonicalInput means appendCanonical met JSON it does not rewrite itself (whitespace, an
// escaped key, a malformed value): the caller falls back to the general path.
var errNotCanonicalInput = errors.New("input needs the general canonical form")

// appendCanonical appends the canonical form of raw (see the package's chain comment) to dst,
// without decoding it: object members are reordered by key and everything else is copied as it
// is. It is only correct for input written by Go's encoder with HTML escaping off, whose strings
// are already escaped canonically; Chain uses it on its own encoding, EventHash takes the general
// path for stored events, and a test holds the two to the same result.
//
// At the top level it leaves out "hash", and inside the top-level "data" it leaves out "body".
func appendCanonical(dst, raw []byte) ([]byte, error) {
	c := canonicalizers.Get().(*canonicalizer)
	defer canonicalizers.Put(c)
	c.in, c.pos = raw, 0
	defer func() { c.in = nil }()
	dst, err := c.value(dst, 0, false)
	if err != nil {
		return nil, err
	}
	if c.pos != len(c.in) {
		return nil, errNotCanonicalInput
	}
	return dst, nil
}

var canonicalizers = sync.Pool{New: func() any { return new(canonicalizer) }}

// canonicalizer rewrites one input. An object's member values are canonicalised into the buffer
// of the next depth before they are sorted and copied out, so that nothing allocates once the
// buffers have grown.
type canonicalizer struct {
	in      []byte
	pos     int
	bufs    [][]byte // by depth
	members []member // a stack: each object's members above those of the objects around it
}

// member is one object member: its key in the input (quotes included, no escapes) and the span
// of its canonical value in the buffer of the object's depth + 1.
type member struct {
	keyStart, keyEnd     int
	valueStart, valueEnd int
}

func (c *canonicalizer) key(m member) []byte { return c.in[m.keyStart+1 : m.keyEnd-1] }

func (c *canonicalizer) value(dst []byte, depth int, inData bool) ([]byte, error) {
	if c.pos >= len(c.in) {
		return nil, errNotCanonicalInput
	}
	switch ch := c.in[c.pos]; {
	case ch == '{':
		return c.object(dst, depth, inData)
	case ch == '[':
		return c.array(dst, depth)
	case ch == '"':
		end, err := c.stringEnd()
		if err != nil {
			return nil, err
		}
		dst = append(dst, c.in[c.pos:end]...)
		c.pos = end
		return dst, nil
	default: // a number, true, false or null: up to the next delimiter
		start := c.pos
		for c.pos < len(c.in) && !isDelimiter(c.in[c.pos]) {
			c.pos++
		}
		if c.pos == start {
			return nil, errNotCanonicalInput
		}
		return append(dst, c.in[start:c.pos]...), nil
	}
}

func isDelimiter(ch byte) bool {
	switch ch {
	case ',', ':', ']', '}', '"', ' ', '\t', '\r', '\n':
		return true
	}
	return false
}

// stringEnd returns the position after the string that starts at c.pos. It refuses the escapes
// that decoding and encoding again would change: Go's encoder writes \uXXXX only for control
// characters and U+2028/U+2029 when HTML escaping is off, but also \u003c, \u003e, \u0026 with it
// on and \ufffd for invalid UTF-8, which come back as the characters themselves.
func (c *canonicalizer) stringEnd() (int, error) {
	for i := c.pos + 1; i < len(c.in); i++ {
		switch c.in[i] {
		case '\\':
			if i+1 < len(c.in) && c.in[i+1] == 'u' {
				if i+6 > len(c.in) {
					return 0, errNotCanonicalInput
				}
				if hex := string(c.in[i+2 : i+6]); hex != "2028" && hex != "2029" && (hex[:2] != "00" || hex[2] > '1') {
					return 0, errNotCanonicalInput
				}
			}
			i++ // skip the escaped character; \uXXXX's digits need no care
		case '"':
			return i + 1, nil
		}
	}
	return 0, errNotCanonicalInput
}

func (c *canonicalizer) object(dst []byte, depth int, inData bool) ([]byte, error) {
	c.pos++ // {
	for len(c.bufs) <= depth+1 {
		c.bufs = append(c.bufs, nil)
	}
	base, bufBase := len(c.members), len(c.bufs[depth+1])
	defer func() {
		c.members, c.bufs[depth+1] = c.members[:base], c.bufs[depth+1][:bufBase]
	}()
	for n := 0; c.pos < len(c.in) && c.in[c.pos] != '}'; n++ {
		if n > 0 {
			if c.in[c.pos] != ',' {
				return nil, errNotCanonicalInput
			}
			c.pos++
		}
		if c.pos >= len(c.in) || c.in[c.pos] != '"' {
			return nil, errNotCanonicalInput
		}
		end, err := c.stringEnd()
		if err != nil {
			return nil, err
		}
		m := member{keyStart: c.pos, keyEnd: end}
		key := c.key(m)
		if bytes.IndexByte(key, '\\') >= 0 {
			return nil, errNotCanonicalInput // sorting needs the decoded key
		}
		c.pos = end
		if c.pos >= len(c.in) || c.in[c.pos] != ':' {
			return nil, errNotCanonicalInput
		}
		c.pos++
		m.valueStart = len(c.bufs[depth+1])
		isData := depth == 0 && string(key) == "data"
		if c.bufs[depth+1], err = c.value(c.bufs[depth+1], depth+1, isData); err != nil {
			return nil, err
		}
		m.valueEnd = len(c.bufs[depth+1])
		if (depth == 0 && string(key) == "hash") || (inData && string(key) == "body") {
			continue
		}
		c.members = append(c.members, m)
	}
	if c.pos >= len(c.in) {
		return nil, errNotCanonicalInput
	}
	c.pos++ // }
	// encoding/json writes a map's keys sorted byte-wise by their decoded form; with no escapes
	// in them, that is the order of the raw keys.
	members := c.members[base:]
	slices.SortFunc(members, func(a, b member) int { return bytes.Compare(c.key(a), c.key(b)) })
	dst = append(dst, '{')
	for i, m := range members {
		if i > 0 {
			if bytes.Equal(c.key(m), c.key(members[i-1])) {
				return nil, errNotCanonicalInput // a duplicate key: the general path keeps the last
			}
			dst = append(dst, ',')
		}
		dst = append(dst, c.in[m.keyStart:m.keyEnd]...)
		dst = append(dst, ':')
		dst = append(dst, c.bufs[depth+1][m.valueStart:m.valueEnd]...)
	}
	return append(dst, '}'), nil
}

func (c *canonicalizer) array(dst []byte, depth int) ([]byte, error) {
	c.pos++ // [
	dst = append(dst, '[')
	for n := 0; c.pos < len(c.in) && c.in[c.pos] != ']'; n++ {
		if n > 0 {
			if c.in[c.pos] != ',' {
				return nil, errNotCanonicalInput
			}
			c.pos++
			dst = append(dst, ',')
		}
		var err error
		if dst, err = c.value(dst, depth+1, false); err != nil {
			return nil, err
		}
	}
	if c.pos >= len(c.in) {
		return nil, errNotCanonicalInput
	}
	c.pos++ // ]
	return append(dst, ']'), nil
}
