/* attnlab serve: the translate part (placeholder until issue 22 lands). */
