package interceptor

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"errors"

	"google.golang.org/protobuf/proto"

	slidejwtv1 "github.com/slidejwt/slidejwt/gen/slidejwt/v1"
	"github.com/slidejwt/slidejwt/interceptor/store"
)

// A session store holds no bearer token in a form that lets its reader
// impersonate a user:
//
//   - It compares refresh tokens by the SHA-256 digest of their id (jti),
//     under a label of its own, never by the id or the token.
//   - The successor that a grace-period replay returns is sealed with
//     AES-256-GCM under a key derived from the id of the refresh token it
//     succeeds, under another label. The store keeps neither that id nor
//     anything it can be derived from; the client that replays presents
//     the token, and with it the id. The session id is the additional
//     data, so a sealed successor moved to another session does not open.
//
// The id is 128 random bits (see randomID), so neither digest can be
// inverted by guessing.
const (
	digestLabel = "slidejwt/v1 refresh id digest\x00"
	sealLabel   = "slidejwt/v1 successor seal key\x00"
)

// refreshDigest is what a store compares for the refresh token with id jti.
func refreshDigest(jti string) store.Digest {
	return sha256.Sum256([]byte(digestLabel + jti))
}

func sealAEAD(jti string) cipher.AEAD {
	key := sha256.Sum256([]byte(sealLabel + jti))
	block, _ := aes.NewCipher(key[:]) // a 32-byte key never fails
	aead, _ := cipher.NewGCM(block)   // nor does the standard nonce size
	return aead
}

// sealSuccessor seals pair, the successor of the refresh token with id
// presentedJTI in session sid.
func sealSuccessor(pair *slidejwtv1.TokenPair, presentedJTI, sid string) ([]byte, error) {
	plain, err := proto.Marshal(pair)
	if err != nil {
		return nil, err
	}
	aead := sealAEAD(presentedJTI)
	nonce := make([]byte, aead.NonceSize(), aead.NonceSize()+len(plain)+aead.Overhead())
	_, _ = rand.Read(nonce) // crypto/rand.Read never fails (Go 1.24+)
	return aead.Seal(nonce, nonce, plain, []byte(sid)), nil
}

var errSealed = errors.New("sealed successor does not open")

// openSuccessor opens what sealSuccessor sealed.
func openSuccessor(sealed []byte, presentedJTI, sid string) (*slidejwtv1.TokenPair, error) {
	aead := sealAEAD(presentedJTI)
	if len(sealed) < aead.NonceSize() {
		return nil, errSealed
	}
	plain, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte(sid))
	if err != nil {
		return nil, errSealed
	}
	pair := new(slidejwtv1.TokenPair)
	if err := proto.Unmarshal(plain, pair); err != nil {
		return nil, errSealed
	}
	return pair, nil
}
