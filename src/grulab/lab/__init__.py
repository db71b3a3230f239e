"""The laboratory: experiments that put the seed's claims to the test. The library never imports it."""
