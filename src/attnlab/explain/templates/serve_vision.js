/* attnlab serve: the vision part (placeholder until issue 22 lands). */
